"""`invoke dev`'s gateway says 503 on /healthz until every part it starts is ready, then 200."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from local.processes import find_free_port
from tests.e2e.test_dev_system import ROOT
from tests.support.stack import TEST_JWT_SECRET

pytestmark = pytest.mark.slow


def test_healthz_is_503_until_ready_then_200(stack, tmp_path):
    port = find_free_port()
    log = tmp_path / "dev.log"
    env = {**os.environ, **stack.env(), "APP_ENV": "development", "AUTH_JWT_SECRET": TEST_JWT_SECRET}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "invoke", "dev", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    answers: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while not answers or answers[-1] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                answers.append(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code)
            except httpx.HTTPError:
                answers.append(0)  # not listening yet
            time.sleep(0.05)
        # At the first 200 every part had passed its health check: the table of healthy parts is printed
        # only after that (and the READY line right after the 200 starts).
        text = log.read_text(errors="replace")
        assert "scheduler" in text and "healthy" in text, text
        for part in ("create_user", "consumer", "cleanup_logs", "admin_panel"):
            assert any(line.split("] ")[-1].startswith(part) and "healthy" in line for line in text.splitlines()), part
        assert 503 in answers, answers  # the gateway was up and said "not yet"
        assert set(answers) <= {0, 503, 200}
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json() == {"status": "ok"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
