"""`invoke dev` as a user runs it: one command, every route behind the gateway, a clean stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from local.processes import find_free_port
from shared.core.auth import Role, issue_token
from shared.core.settings import Settings
from tests.support.stack import TEST_JWT_SECRET, Stack

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes] | None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc is None or proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n" + log.read_text()
        time.sleep(0.2)


@contextlib.contextmanager
def invoke_dev(stack: Stack, log: Path) -> Iterator[dict]:
    """`invoke dev` on a free port, against this run's servers (so it starts none of its own)."""
    port = find_free_port()
    env = {**os.environ, **stack.env(), "APP_ENV": "development", "AUTH_JWT_SECRET": TEST_JWT_SECRET}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "invoke", "dev", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_line(log, "READY", proc)
        yield {"url": f"http://127.0.0.1:{port}", "proc": proc, "log": log}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


@pytest.fixture(scope="module")
def dev_system(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    with invoke_dev(stack, tmp_path_factory.mktemp("dev") / "dev.log") as system:
        yield system


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
        # The `deps` fixture wiped Redis, heartbeats included: wait for invoke dev's real consumer to beat again
        # (without one, the production default serves creations synchronously).
        deadline = time.monotonic() + 30
        while http.get("/api/admin/system/metrics", headers=admin).json()["workers"]["alive"] < 1:
            assert time.monotonic() < deadline, "invoke dev's consumer never showed a heartbeat"
            time.sleep(0.2)
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
    # No address in any process's log lines (every function, the consumer, the gateway).
    log = dev_system["log"].read_text(errors="replace")
    assert "e2e-q@example.com" not in log and "e2e-s@example.com" not in log


def test_configured_servers_are_used_and_none_is_started(dev_system):
    log = dev_system["log"].read_text()
    assert "starting PostgreSQL" not in log and "starting Redis" not in log and "starting the SES" not in log
    for part in ("create_user", "consumer", "gateway", "scheduler"):
        assert part in log


def test_code_change_reloads_functions_and_consumer(dev_system, stack):
    marker = ROOT / "shared" / "__init__.py"
    os.utime(marker)
    wait_for_line(dev_system["log"], "reloaded", dev_system["proc"], timeout=60)
    with httpx.Client(base_url=dev_system["url"], timeout=10) as http:
        assert http.get("/healthz").status_code == 200
        settings = _settings(stack)
        admin = {"Authorization": f"Bearer {issue_token(settings, role=Role.ADMIN, subject='e2e-admin')}"}
        assert http.get("/api/admin/system/mode", headers=admin).status_code == 200


def test_sigterm_stops_every_process_it_started(dev_system):
    proc = dev_system["proc"]
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 10
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
    assert "all processes stopped" in dev_system["log"].read_text()


def test_a_dead_consumer_is_reported_loudly_and_everything_stops(stack, tmp_path, deps):
    with invoke_dev(stack, tmp_path / "dev.log") as system:
        proc = system["proc"]
        consumer = next(p for p in psutil.Process(proc.pid).children(recursive=True)
                        if "functions.consumer" in " ".join(p.cmdline()))
        everything = psutil.Process(proc.pid).children(recursive=True)
        consumer.kill()
        assert proc.wait(30) == 1
        log = system["log"].read_text()
        assert "!! consumer DIED" in log and "stopping everything" in log
        _gone, alive = psutil.wait_procs(everything, timeout=10)
        assert not alive


def _dev_port() -> int:
    """A free port in 18100-18199 (this project's block for the e2e run of `invoke dev`)."""
    for port in range(18100, 18200):
        with contextlib.suppress(OSError), socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            return port
    raise AssertionError("no free port in 18100-18199")


def _processes_using(state: Path) -> list[psutil.Process]:
    """Every process of that `invoke dev` run, wherever it was reparented: it names the state folder on its
    command line, runs in it (Redis), or inherited `PROVISIONER_STATE_DIR` (functions, consumer, gateway, moto)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if (str(state) in " ".join(process.info["cmdline"] or []) or process.cwd().startswith(str(state))
                    or process.environ().get("PROVISIONER_STATE_DIR") == str(state)):
                found.append(process)
    return found


def test_invoke_dev_with_nothing_configured_runs_its_own_servers_and_ctrl_c_leaves_nothing(tmp_path):
    """The "only Python and pip" path: no URL set, an empty state folder; embedded PostgreSQL, Redis and moto."""
    state = tmp_path / "state"
    log = tmp_path / "dev.log"
    unset = ("DATABASE_URL", "REDIS_URL", "AWS_ENDPOINT_URL_SES", "QUEUE_PREFIX", "AUTH_JWT_SECRET", "APP_ENV")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["PROVISIONER_STATE_DIR"] = str(state)
    port = _dev_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "invoke", "dev", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_line(log, "READY", proc, timeout=180)
        text = log.read_text()
        assert "starting PostgreSQL" in text and "starting Redis" in text and "starting the SES" in text
        started = json.loads((state / "state.json").read_text())
        for url in (started["database_url"], started["redis_url"], started["ses_url"]):
            parts = urllib.parse.urlsplit(url)
            assert parts.hostname == "127.0.0.1" and parts.port not in (5432, 6379), url
        settings = Settings(APP_ENV="development", DATABASE_URL=started["database_url"],
                            REDIS_URL=started["redis_url"])  # the dev placeholder secret, as `invoke dev` uses
        sales = {"Authorization": f"Bearer {issue_token(settings, role=Role.SALES_MANAGER, subject='e2e-own')}"}
        address = "e2e-own-servers@example.com"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            queued = http.post("/api/users", headers=sales, json={"email": address, "full_name": "Own Servers"})
            assert queued.status_code == 202, queued.text  # through the queue: the dev consumer is live
            deadline = time.monotonic() + 30
            while http.get(queued.headers["location"], headers=sales).json()["status"] != "created":
                assert time.monotonic() < deadline, http.get(queued.headers["location"], headers=sales).text
                time.sleep(0.2)
        with psycopg.connect(started["database_url"]) as conn:
            row = conn.execute("SELECT full_name, request_id FROM users WHERE email = %s", (address,)).fetchone()
        assert row == ("Own Servers", queued.json()["request_id"])
        # The welcome email, read through the SES emulator's own API.
        deadline = time.monotonic() + 30
        while True:
            sent = httpx.get(started["ses_url"] + "/moto-api/data.json", timeout=5).json()["ses"]
            to = [m for m in sent.get("Message", []) if address in m["destinations"]["ToAddresses"]]
            if to:
                break
            assert time.monotonic() < deadline, sent
            time.sleep(0.3)
        assert len(to) == 1 and "/set-password#token=" in to[0]["body"]
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        servers = _processes_using(state)
        assert len(servers) >= 10  # PostgreSQL, Redis, moto, every function, the consumer, the gateway
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal: the whole foreground process group
        try:
            assert proc.wait(60) == 0, log.read_text()[-3000:]
        except subprocess.TimeoutExpired:
            raise AssertionError("invoke dev did not stop within 60 s of Ctrl-C") from None
        _gone, alive = psutil.wait_procs([*family, *servers], timeout=15)
        assert not alive, [p.pid for p in alive]
        assert _processes_using(state) == []
        assert "all processes stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for leftover in _processes_using(state):  # only what this test started (its own temporary folder)
            with contextlib.suppress(psutil.Error):
                leftover.kill()
