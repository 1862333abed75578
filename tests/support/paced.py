"""An open-loop paced load: request i is due at t0 + i / rate, sent by one of a bounded fleet of keep-alive senders.

Used by the load test and by the `paced_create_rate` bench case (`python -m tests.support.paced ...` prints one
JSON line). A slow system shows as an achieved rate below the target; every figure comes from the answers.

Each sender owns plain HTTP/1.1 keep-alive connections (one per URL) and writes the request bytes itself: the
generator shares the machine's cores with what it measures, and httpx spent about 3.5 ms of CPU per request here,
three times what the create function spends on answering it (bench/README.md, "Warm-up").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
import urllib.parse
from typing import Any


class _Conn:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1: write a request, read the status and the body."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, raw: bytes, timeout_s: float) -> int:
        async with asyncio.timeout(timeout_s):
            if self.reader is not None and self.reader.at_eof():  # the server closed it while idle: a new one
                self.close()
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            if length:
                await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def nearest_rank(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a sorted, non-empty sample."""
    return sorted_values[max(1, math.ceil(q / 100 * len(sorted_values))) - 1]


async def paced_load(urls: list[str], token: str, *, total: int, rate: float, connections: int, prefix: str,
                     t0: float | None = None) -> dict[str, Any]:
    """POST `total` creations (`{prefix}-{i}@example.com`) to `urls` in turn, paced at `rate`/s from `t0`.

    A bounded set of senders, not `total` coroutines waiting in the HTTP client's pool: such a pool wait is itself
    quadratic and would measure the client, not the system.
    """
    if not all(u.startswith(("http://127.0.0.1:", "http://localhost:")) for u in urls):
        raise ValueError("load is only ever sent to this machine")
    latencies: list[float] = []
    codes: dict[int, int] = {}
    errors: dict[str, int] = {}
    accepted: list[str] = []
    next_index = iter(range(total))
    started = time.perf_counter() if t0 is None else t0
    paths = [urllib.parse.urlsplit(u) for u in urls]
    heads = [(f"POST {p.path.rstrip('/')}/api/users HTTP/1.1\r\nHost: {p.netloc}\r\n"
              f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: ").encode()
             for p in paths]

    async def sender() -> None:
        conns = [_Conn(u) for u in urls]
        try:
            for i in next_index:
                await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
                t = time.perf_counter()
                address = f"{prefix}-{i}@example.com"
                body = json.dumps({"email": address, "full_name": f"Load {i}"}).encode()
                conn = conns[i % len(urls)]
                try:
                    raw = heads[i % len(urls)] + str(len(body)).encode() + b"\r\n\r\n" + body
                    status = await conn.post(raw, 30)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        ValueError, IndexError) as err:
                    errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
                    conn.close()
                    continue
                latencies.append(time.perf_counter() - t)
                codes[status] = codes.get(status, 0) + 1
                if status in (201, 202):
                    accepted.append(address)
        finally:
            for conn in conns:
                conn.close()

    await asyncio.gather(*(sender() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    answered = len(latencies)
    return {"codes": codes, "errors": errors, "answered": answered, "elapsed_s": elapsed,
            "target_rate": rate, "achieved_rate": answered / elapsed if elapsed > 0 else 0.0,
            "p50_ms": 1000 * nearest_rank(latencies, 50) if latencies else None,
            "p99_ms": 1000 * nearest_rank(latencies, 99) if latencies else None,
            "addresses": [f"{prefix}-{i}@example.com" for i in range(total)], "accepted": accepted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", action="append", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--total", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--prefix", required=True)
    args = parser.parse_args()
    result = asyncio.run(paced_load(args.url, args.token, total=args.total, rate=args.rate,
                                    connections=args.connections, prefix=args.prefix))
    result.pop("addresses")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
