"""The load generator: always a separate process. `wrk` (Debian's package) when installed, else the bounded
Python client below run as `python -m bench.loadgen` in a subprocess.

Both produce the same figures: requests, duration_s, rps, p50_ms, p99_ms, max_ms, codes, errors, tool.
Every run is bounded by a request count and/or a duration, and only ever targets 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import resource
import shutil
import signal
import sys
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import WRK_MARKER, parse_wrk_output, percentile

ROOT = Path(__file__).resolve().parents[1]
LUA_SCRIPT = Path(__file__).with_name("wrk_post.lua")


@dataclass(frozen=True)
class Load:
    """What to send: method and path on a 127.0.0.1 URL, with how many connections, for how long / how many."""

    url: str
    method: str = "POST"
    token: str = ""
    connections: int = 1
    duration_s: float = 10.0  # upper bound in count mode
    max_requests: int = 0  # 0: run for duration_s
    threads: int = 1
    histogram: bool = False  # also return every latency as (ms, count) pairs, to pool several runs

    def __post_init__(self) -> None:
        host = urllib.parse.urlsplit(self.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"load is only ever sent to this machine, not {host!r}")


def wrk_available() -> bool:
    """wrk is installed and not switched off with BENCH_NO_WRK=1."""
    return os.environ.get("BENCH_NO_WRK") != "1" and shutil.which("wrk") is not None


async def run_load(load: Load) -> dict[str, Any]:
    """Run one bounded load and return its figures (see the module docstring)."""
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    before = children_cpu_s()
    result = await (_run_wrk(load, prefix) if wrk_available() else _run_python(load, prefix))
    # What the load generator itself used of the machine's 2 cores (it shares them with the servers).
    result["generator_cpu_s"] = children_cpu_s() - before
    return result


def children_cpu_s() -> float:
    """User + system CPU seconds of this process's children that have ended (the load generator, once waited
    for; the servers are still running, so they are not in it)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _run_wrk(load: Load, prefix: str) -> dict[str, Any]:
    threads = max(1, min(load.threads, load.connections))
    env = {**os.environ, "BENCH_METHOD": load.method, "BENCH_TOKEN": load.token, "BENCH_PREFIX": prefix,
           "BENCH_MAX_REQUESTS": str(load.max_requests), "BENCH_THREADS": str(threads),
           "BENCH_HIST": "1" if load.histogram else "0"}
    duration = max(1, round(load.duration_s))
    cmd = [shutil.which("wrk") or "wrk", f"-t{threads}", f"-c{load.connections}", f"-d{duration}s",
           "--timeout", "10s", "-s", str(LUA_SCRIPT), load.url]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env,
                                                start_new_session=True, limit=2**24)
    if proc.stdout is None:
        raise RuntimeError("wrk has no stdout pipe")
    lines: list[str] = []
    done_threads = 0
    interrupted = False
    try:
        async with asyncio.timeout(duration + 30):
            while raw := await proc.stdout.readline():
                line = raw.decode(errors="replace").rstrip("\n")
                lines.append(line)
                if line == "BENCH_THREAD_DONE":
                    done_threads += 1
                    if done_threads >= threads and not interrupted:
                        interrupted = True
                        proc.send_signal(signal.SIGINT)  # wrk's main thread sleeps for -d; this ends it now
            await proc.wait()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    stderr = (await proc.stderr.read()).decode(errors="replace") if proc.stderr else ""
    text = "\n".join(lines)
    if WRK_MARKER not in text:
        raise RuntimeError(f"wrk gave no report (exit {proc.returncode}):\n{text[-2000:]}\n{stderr[-2000:]}")
    result = parse_wrk_output(text)
    result["tool"] = "wrk"
    return result


async def _run_python(load: Load, prefix: str) -> dict[str, Any]:
    spec = {"url": load.url, "method": load.method, "token": load.token, "connections": load.connections,
            "duration_s": load.duration_s, "max_requests": load.max_requests, "prefix": prefix,
            "histogram": load.histogram}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.loadgen", json.dumps(spec),
                                                cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        async with asyncio.timeout(load.duration_s + 60):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"python load client failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    result["codes"] = {int(k): v for k, v in result["codes"].items()}
    result["hist"] = [(float(v), int(c)) for v, c in result["hist"]]
    return result


# --------------------------------------------------------------------------- the fallback client (subprocess)


class _Connection:
    """One keep-alive HTTP/1.1 connection with just enough parsing for our servers' answers."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        if self.reader is None:
            raise OSError("not connected")
        self.writer.write(raw)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def python_client(spec: dict[str, Any]) -> dict[str, Any]:
    """The bounded fallback client: `connections` loops, each one request at a time, until the count or time."""
    parts = urllib.parse.urlsplit(spec["url"])
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    method = spec["method"]
    max_requests = int(spec["max_requests"])
    deadline = time.perf_counter() + float(spec["duration_s"])
    headers = f"Host: {host}:{port}\r\n"
    if spec["token"]:
        headers += f"Authorization: Bearer {spec['token']}\r\n"
    latencies: list[float] = []
    codes: dict[int, int] = {}
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    issued = 0

    def next_request() -> bytes | None:
        nonlocal issued
        if (max_requests and issued >= max_requests) or time.perf_counter() >= deadline:
            return None
        issued += 1
        if method == "GET":
            return f"GET {path} HTTP/1.1\r\n{headers}\r\n".encode()
        body = json.dumps({"email": f"{spec['prefix']}-{issued}@example.com", "full_name": f"Bench User {issued}"})
        return (f"{method} {path} HTTP/1.1\r\n{headers}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}").encode()

    async def loop() -> None:
        conn = _Connection(host, port)
        try:
            while (raw := next_request()) is not None:
                started = time.perf_counter()
                try:
                    status = await asyncio.wait_for(conn.request(raw), 10)
                except TimeoutError:
                    errors["timeout"] += 1
                    await conn.close()
                    continue
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    errors["read"] += 1
                    await conn.close()
                    continue
                latencies.append(time.perf_counter() - started)
                codes[status] = codes.get(status, 0) + 1
                if status > 399:
                    errors["status"] += 1
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(int(spec["connections"]))))
    duration = time.perf_counter() - started
    ms = [x * 1000 for x in latencies] or [0.0]
    hist = collections.Counter(round(x, 3) for x in ms) if spec.get("histogram") else {}
    return {"requests": len(latencies), "duration_s": duration, "rps": len(latencies) / duration,
            "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": max(ms), "codes": codes,
            "errors": errors, "hist": sorted(hist.items()), "tool": "python"}


def main() -> None:
    """`python -m bench.loadgen '{spec json}'`: run the fallback client and print its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("spec", help="JSON: url, method, token, connections, duration_s, max_requests, prefix")
    spec = json.loads(parser.parse_args().spec)
    Load(url=spec["url"])  # refuses anything but this machine
    print(json.dumps(asyncio.run(python_client(spec))))


if __name__ == "__main__":
    main()
