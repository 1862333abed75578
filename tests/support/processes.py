"""Real consumer processes for tests: started by PID, stopped by PID, output kept for failure messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[2]


class ConsumerProcess:
    """`python -m functions.consumer` with the given environment."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str | None = None, **overrides: str) -> None:
        self.name = name or f"consumer-{uuid.uuid4().hex[:6]}"
        self.env = {**os.environ, **env, "INSTANCE_NAME": self.name, "PYTHONUNBUFFERED": "1", **overrides}
        self.log_path = log_dir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, database_url: str, timeout: float = 30.0) -> ConsumerProcess:
        """Start and wait for its `consumer_started` health event (connected and polling)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "functions.consumer"], cwd=ROOT, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"consumer exited with {self.proc.returncode}:\n{self.output()}")
            with psycopg.connect(database_url, autocommit=True) as conn:
                row = conn.execute("SELECT 1 FROM system_health_logs WHERE event = 'consumer_started'"
                                   " AND metadata->>'consumer' = %s", (self.name,)).fetchone()
            if row:
                return self
            if time.monotonic() > deadline:
                raise AssertionError(f"consumer not started within {timeout} s:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s; always by PID."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
