"""The black-box alert check: `invoke dev` with ALERT_WEBHOOK_URL at a receiver, Redis stopped under it; the
scheduler tick alone (nobody sends a request) must deliver `firing` within 90 s and `resolved` once Redis is back."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.alert_receiver import AlertReceiver
from local.processes import find_free_port
from local.redis_server import RedisServer
from tests.e2e.test_dev_system import ROOT, wait_for_line
from tests.support.stack import TEST_JWT_SECRET

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def dev_with(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "invoke", "dev", "--port", str(find_free_port())], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_line(log, "READY", proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def wait_for_alert(receiver: AlertReceiver, state: str, proc: subprocess.Popen[bytes], log: Path,
                   timeout: float) -> float:
    started = time.monotonic()
    while not any(a["alert"]["event"] == "redis_unavailable" and a["alert"]["state"] == state
                  for a in receiver.received):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() - started < timeout, f"no {state} alert within {timeout} s:\n" + \
            log.read_text()[-3000:]
        time.sleep(0.5)
    return time.monotonic() - started


@pytest.mark.timeout(360)
def test_redis_stopped_under_invoke_dev_alerts_within_90_s_and_resolves(stack, deps, tmp_path, figures):
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    receiver = AlertReceiver().start()
    env = {**os.environ, **stack.env(), "APP_ENV": "development", "AUTH_JWT_SECRET": TEST_JWT_SECRET,
           "REDIS_URL": redis_server.url, "ALERT_WEBHOOK_URL": receiver.url}
    log = tmp_path / "dev.log"
    try:
        with dev_with(env, log) as proc:
            redis_server.stop()
            fired_s = wait_for_alert(receiver, "firing", proc, log, timeout=90)
            redis_server.start()
            resolved_s = wait_for_alert(receiver, "resolved", proc, log, timeout=90)
        states = [a["alert"]["state"] for a in receiver.received if a["alert"]["event"] == "redis_unavailable"]
        assert states == ["firing", "resolved"]
        figures(firing_after_s=fired_s, resolved_after_s=resolved_s)
    finally:
        receiver.stop()
        redis_server.stop()
