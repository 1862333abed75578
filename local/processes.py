"""Process plumbing shared by the local servers (postgres_server, redis_server, ses_emulator).

The provisioner must run on a machine where nothing is configured, so `local/` launches its own PostgreSQL,
Redis and SES emulator as child processes. The rules every one of them follows live here:

* Every server is started with :class:`subprocess.Popen` directly (no ``pg_ctl``, no daemonising), in its own
  session, so we always own the exact PID. Stopping only ever signals that PID (and, for PostgreSQL, that PID's
  own children); nothing is ever killed by name.
* Ports default to free ephemeral ports; 5432 and 6379 (where a system PostgreSQL/Redis may live) are never
  chosen.
* Every wait is bounded and failures raise :class:`ServiceError` with the tail of the server log.
* Importing has no side effects. Each ``start()`` registers the matching ``stop()`` with :mod:`atexit` as a
  safety net (and ``stop()`` unregisters it), so a parent that exits normally never leaks a server. A parent
  killed with SIGKILL cannot run atexit hooks; its servers then keep running and must be stopped by PID.

Why not mirakuru (evaluated for start/readiness/stop, version 3.1.0): its ``stop()`` and ``kill()`` signal the
whole process group (``os.killpg``), then look for leftovers by scanning *every* process on the machine for an
environment marker (``mirakuru_uuid``) and signal what they find; a module-level ``atexit`` hook does the same
scan with SIGKILL. That is selection by marker, not by PID, which this project rules out, and the scan is not
free: one ``processes_with_env`` call took 187 ms over the 176 processes of the development machine (measured on
2026-11-29), paid on every stop. Its readiness checks (``TCPExecutor``: the port accepts; ``HTTPExecutor``: a
HEAD answers) cannot tell our server from another one that holds the port, which the probes below do (the
PostgreSQL ``data_directory``, the Redis ``process_id``). What remains home-made is ``ManagedProcess`` (about
90 lines): a Popen in its own session, a bounded readiness poll, and a by-PID stop.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import signal as _signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

#: Ports that belong to a system PostgreSQL / Redis and must never be used.
RESERVED_PORTS = frozenset({5432, 6379})

LOG_TAIL_LINES = 40
POLL_INTERVAL = 0.1


class ServiceError(RuntimeError):
    """A local service could not be started, reached or stopped.

    The message names the service, says why, and (when available) ends with the
    tail of the server's log file.
    """

    def __init__(self, service: str, reason: str, log_path: Path | None = None) -> None:
        self.service = service
        self.reason = reason
        self.log_path = log_path
        message = f"{service}: {reason}"
        if log_path is not None:
            message += f"\n--- last lines of {log_path} ---\n{tail(log_path)}"
        super().__init__(message)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of ``path`` (or a note if it cannot be read)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except OSError as exc:
        return f"<log unavailable: {exc}>"
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:]) or "<log is empty>"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_HANDED_OUT: set[int] = set()  # every port find_free_port returned in this process


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now (never 5432 or 6379).

    Chosen below the kernel's ephemeral range: the port is released before returning, and a port inside that
    range can be taken in between as the local end of any outgoing connection (seen: a function's bind failing
    with EADDRINUSE while two dozen processes opened their database pools). Outside it only another server
    choosing the same number can collide; servers started with it fail loudly (ServiceError) in that case.
    """
    low, _ = _ephemeral_range()
    candidates = range(20000, low) if low > 21000 else range(low - 1000 if low > 11000 else 10000, low)
    for _ in range(200):
        port = random.choice(candidates)  # noqa: S311 - a port number, not a secret
        # Never the same number twice in one process: `invoke dev` picks about 35 ports before any server binds
        # its own, and random picks from ~12,000 repeat in about one run in twenty (seen: two functions given
        # one port, the second exiting with EADDRINUSE and stopping everything).
        if port in RESERVED_PORTS or port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise ServiceError("port allocator", f"could not find a free port on {host}")


def check_port(service: str, port: int) -> int:
    """Reject the ports of the system PostgreSQL/Redis."""
    if port in RESERVED_PORTS:
        raise ServiceError(service, f"port {port} is reserved for a system service and must not be used")
    if not 0 < port < 65536:
        raise ServiceError(service, f"invalid port {port}")
    return port


def open_log(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


def terminate(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Send ``sig`` to ``proc`` (continuing it first), wait, then SIGKILL; all bounded."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        # A SIGSTOPped server cannot act on the shutdown signal until continued.
        proc.send_signal(_signal.SIGCONT)
        proc.send_signal(sig)
    try:
        proc.wait(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired as exc:  # pragma: no cover - kernel would have to refuse SIGKILL
            raise ServiceError("process", f"pid {proc.pid} survived SIGKILL") from exc


class ManagedProcess:
    """Shared process bookkeeping: PID, signals, liveness, atexit safety net, context manager."""

    _service = "service"

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """PID of the server we started, or None before start() / after stop().

        After the process died on its own (e.g. SIGKILL via :meth:`signal`) the PID is
        still reported until :meth:`stop` is called.
        """
        return None if self._proc is None else self._proc.pid

    def is_running(self) -> bool:
        """True while the process we started exists (a SIGSTOPped process counts as running)."""
        return self._proc is not None and self._proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` (e.g. SIGKILL, SIGSTOP, SIGCONT) to our server's PID, for fault tests."""
        if self._proc is None or self._proc.poll() is not None:
            raise ServiceError(self._service, f"cannot send signal {sig}: server is not running")
        self._proc.send_signal(sig)

    def start(self, timeout: float = 10.0) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _atexit_stop(self) -> None:
        """Safety net registered by start(): stop the server when the interpreter exits."""
        with contextlib.suppress(Exception):
            self.stop()

    def _register_atexit(self) -> None:
        atexit.register(self._atexit_stop)

    def _unregister_atexit(self) -> None:
        atexit.unregister(self._atexit_stop)

    def _wait_ready(self, deadline: float, timeout: float, probe: Callable[[float], str | None],
                    waiting_for: str, log_path: Path | None) -> None:
        """Poll `probe(remaining_s)` (None when ready, else why not) until ready; raise if the process exits
        or the deadline passes, with the server log's tail."""
        last_error = "not tried yet"
        while True:
            code = self._proc.poll() if self._proc is not None else None
            if code is not None:
                raise self._fail_start(f"{self._service} exited with status {code} during startup", log_path)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail_start(f"{waiting_for} after {timeout:.0f}s (last error: {last_error})", log_path)
            error = probe(remaining)
            if error is None:
                return
            last_error = error
            time.sleep(POLL_INTERVAL)

    def _fail_start(self, reason: str, log_path: Path | None) -> ServiceError:
        """Build the error (reading the log tail first), then stop the half-started process."""
        error = ServiceError(self._service, reason, log_path)
        self.stop(timeout=2)
        return error

    def _reset_if_dead(self) -> None:
        """Forget (and clean up after) a process that exited on its own, e.g. after SIGKILL."""
        if self._proc is not None and self._proc.poll() is not None:
            self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
