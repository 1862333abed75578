"""Real function processes (functions-framework, as deployed) for load and e2e tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from infra.manifest import load_manifest
from local.processes import find_free_port

ROOT = Path(__file__).resolve().parents[2]


class FunctionProcess:
    """`python -m functions_framework --target NAME --asgi` on a free 127.0.0.1 port."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, instance: str = "") -> None:
        self.spec = load_manifest()[name]
        self.port = find_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "INSTANCE_NAME": instance or f"{name}-{self.port}"}
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> FunctionProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "functions_framework", "--target", self.spec.target, "--source",
                 str(self.spec.source_path), "--host", "127.0.0.1", "--port", str(self.port), "--asgi"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                with urllib.request.urlopen(self.url + "/", timeout=1):  # noqa: S310
                    return self
            except urllib.error.HTTPError:
                return self
            except OSError:
                pass
            assert time.monotonic() < deadline, self.log_path.read_text()
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
