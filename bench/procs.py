"""Processes the suite starts: function servers (functions-framework), consumers and the bare BullMQ worker.

Every one is started with Popen in its own session and stopped by its PID (its process group is the one it
leads), also when a case fails: the `Registry` stops whatever is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import psycopg

from local.processes import find_free_port

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- resource figures


def _tree(pid: int) -> list[psutil.Process]:
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by a process and its live descendants."""
    total = 0.0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def _vm_hwm_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def tree_rss_hwm_mb(pid: int) -> dict[str, float]:
    """Peak resident memory (VmHWM) of the busiest process of the tree and of the tree added up, in MB."""
    values = []
    for proc in _tree(pid):
        kib = _vm_hwm_kib(proc.pid)
        if not kib:  # not Linux: the current RSS is the best we have
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                kib = proc.memory_info().rss // 1024
        values.append(kib / 1024)
    return {"max_process_mb": max(values, default=0.0), "tree_mb": sum(values)}


# --------------------------------------------------------------------------- processes


class Managed:
    """A child started in its own session; stop() signals only its PID's process group."""

    name = "process"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _popen(self, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,  # noqa: S603
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the group this child leads, then SIGKILL after `timeout`; always by PID."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


class FunctionServer(Managed):
    """`python -m functions_framework --target T --source S --asgi` on a free 127.0.0.1 port."""

    def __init__(self, target: str, source: Path, env: dict[str, str], log_dir: Path, instance: str = "") -> None:
        super().__init__()
        self.name = instance or target
        self.target = target
        self.source = source
        self.port = find_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "INSTANCE_NAME": instance or f"{target}-{self.port}"}
        self.log_dir = log_dir
        self.launched_at = 0.0

    def launch(self) -> FunctionServer:
        """Start the process (returns at once; `wait_answer` waits for it to serve)."""
        cmd = [sys.executable, "-m", "functions_framework", "--target", self.target, "--source", str(self.source),
               "--host", "127.0.0.1", "--port", str(self.port), "--asgi"]
        self.launched_at = time.perf_counter()
        self._popen(cmd, self.env, self.log_dir / f"{self.name}-{self.port}.log")
        return self

    async def wait_answer(self, path: str = "/", *, method: str = "GET", headers: dict[str, str] | None = None,
                          want: int | None = None, within_s: float = 40.0, interval: float = 0.02) -> tuple[float, int]:
        """Poll until the process answers (`want`: that status); returns (seconds since launch, status)."""
        deadline = self.launched_at + within_s
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            while True:
                if not self.running():
                    raise RuntimeError(f"{self.name} exited with {self.proc and self.proc.returncode}:\n"
                                       f"{self.output()}")
                try:
                    response = await client.request(method, path, headers=headers)
                except httpx.TransportError:
                    pass
                else:
                    if want is None or response.status_code == want:
                        return time.perf_counter() - self.launched_at, response.status_code
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{self.name} did not answer within {within_s} s:\n{self.output()}")
                await asyncio.sleep(interval)

    async def start(self) -> FunctionServer:
        self.launch()
        await self.wait_answer()
        return self


class ConsumerProc(Managed):
    """`python -m functions.consumer`; `wait_started` waits for its `consumer_started` health event."""

    def __init__(self, env: dict[str, str], log_dir: Path, **overrides: str) -> None:
        super().__init__()
        self.name = f"bench-consumer-{uuid.uuid4().hex[:6]}"
        self.env = {**os.environ, **env, "INSTANCE_NAME": self.name, "PYTHONUNBUFFERED": "1",
                    "CONSUMER_SHUTDOWN_GRACE_S": "5", **overrides}
        self.log_dir = log_dir

    def launch(self) -> ConsumerProc:
        self._popen([sys.executable, "-m", "functions.consumer"], self.env, self.log_dir / f"{self.name}.log")
        return self

    async def wait_started(self, database_url: str, within_s: float = 40.0) -> None:
        deadline = time.monotonic() + within_s
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            while True:
                if not self.running():
                    raise RuntimeError(f"consumer {self.name} exited:\n{self.output()}")
                cur = await conn.execute("SELECT 1 FROM system_health_logs WHERE event = 'consumer_started'"
                                         " AND metadata->>'consumer' = %s", (self.name,))
                if await cur.fetchone():
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"consumer {self.name} not started within {within_s} s:\n{self.output()}")
                await asyncio.sleep(0.05)


class BareWorkerProc(Managed):
    """`python -m bench.bare_worker`: a plain bullmq Worker with an empty processor (a limit of the consumer), or
    one doing only the consumer's SQL (`database_url`)."""

    name = "bare-worker"

    def __init__(self, redis_url: str, prefix: str, queue: str, count: int, log_dir: Path,
                 database_url: str | None = None) -> None:
        super().__init__()
        self.args = ["--redis-url", redis_url, "--prefix", prefix, "--queue", queue, "--count", str(count),
                     *(["--database-url", database_url] if database_url else [])]
        self.result_path = log_dir / f"bare-worker-{uuid.uuid4().hex[:6]}.json"
        self.log_dir = log_dir

    def launch(self) -> BareWorkerProc:
        self._popen([sys.executable, "-m", "bench.bare_worker", *self.args, "--result", str(self.result_path)],
                    {**os.environ, "PYTHONUNBUFFERED": "1"}, self.log_dir / "bare-worker.log")
        return self

    async def wait_line(self, marker: str, within_s: float = 40.0) -> None:
        """Wait until the worker's log holds `marker` (it prints READY after its first poll)."""
        deadline = time.monotonic() + within_s
        while marker not in self.output(100_000):
            if not self.running() and marker not in self.output(100_000):
                raise RuntimeError(f"bare worker exited:\n{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"bare worker never printed {marker}:\n{self.output()}")
            await asyncio.sleep(0.02)

    def result(self) -> dict[str, Any]:
        import json

        return dict(json.loads(self.result_path.read_text()))


M = TypeVar("M", bound=Managed)


class Registry:
    """Everything started during the run, stopped in reverse order at the end (also on failure)."""

    def __init__(self) -> None:
        self._items: list[Managed] = []

    def add(self, item: M) -> M:
        self._items.append(item)
        return item

    def stop(self, item: Managed) -> None:
        item.stop()
        with contextlib.suppress(ValueError):
            self._items.remove(item)

    def stop_all(self) -> None:
        while self._items:
            item = self._items.pop()
            with contextlib.suppress(Exception):
                item.stop()
