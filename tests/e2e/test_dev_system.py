"""`invoke dev` as a user runs it: one command, every route behind the gateway, a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from local.services import find_free_port
from shared.auth import Role, issue_token
from shared.settings import Settings
from tests.support.stack import TEST_JWT_SECRET, Stack

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dev_system(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`invoke dev` on a free port, against this run's servers (so it starts none of its own)."""
    port = find_free_port()
    env = {**os.environ, **stack.env(), "APP_ENV": "development", "AUTH_JWT_SECRET": TEST_JWT_SECRET}
    log = tmp_path_factory.mktemp("dev") / "dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "invoke", "dev", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "READY" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no READY line within 60 s:\n" + log.read_text()
            time.sleep(0.2)
        yield {"url": f"http://127.0.0.1:{port}", "proc": proc, "log": log}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def _settings(stack: Stack) -> Settings:
    return Settings(APP_ENV="development", DATABASE_URL=stack.database_url, REDIS_URL=stack.redis_url,
                    AUTH_JWT_SECRET=TEST_JWT_SECRET)


def test_every_route_answers_through_the_gateway_in_both_modes(dev_system, stack, deps):
    settings = _settings(stack)
    admin = {"Authorization": f"Bearer {issue_token(settings, role=Role.ADMIN, subject='e2e-admin')}"}
    sales = {"Authorization": f"Bearer {issue_token(settings, role=Role.SALES_MANAGER, subject='e2e')}"}
    with httpx.Client(base_url=dev_system["url"], timeout=10) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/openapi.json").json()["openapi"].startswith("3.1")
        queued = http.post("/api/users", headers=sales, json={"email": "e2e-q@example.com", "full_name": "Q"})
        assert queued.status_code == 202
        status = http.get(queued.headers["location"], headers=sales)
        assert status.status_code == 200 and status.json()["status"] in ("queued", "processing", "created")
        mode = http.post("/api/admin/system/mode", headers=admin, json={"mode": "sync_direct", "reason": "e2e"})
        assert mode.status_code == 200
        time.sleep(1.1)  # the per-instance mode cache
        created = http.post("/api/users", headers=sales, json={"email": "e2e-s@example.com", "full_name": "S"})
        assert created.status_code == 201 and created.json()["user"]["email"] == "e2e-s@example.com"
        assert any(m["to"] == ["e2e-s@example.com"] for m in stack.ses.sent_messages())
        assert http.get("/api/admin/system/mode", headers=admin).json()["mode"] == "sync_direct"
        metrics = http.get("/api/admin/system/metrics", headers=admin).json()
        assert metrics["redis"]["available"] is True and metrics["totals"]["created"] >= 1
        logs = http.get("/api/admin/system/logs?limit=5", headers=admin).json()["items"]
        assert logs and logs[0]["event"] == "user_created"
        assert http.post("/api/admin/system/cleanup", headers=admin).json()["retention_days"] == 7
        assert http.get("/api/admin/system/metrics", headers=sales).status_code == 403
        assert http.get("/api/users").status_code == 405
        assert http.get("/nowhere").status_code == 404


def test_sigterm_stops_every_process_it_started(dev_system):
    proc = dev_system["proc"]
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 10
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
    assert "all processes stopped" in dev_system["log"].read_text()
