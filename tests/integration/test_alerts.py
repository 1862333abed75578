"""Alerts end to end: real watchdog function processes, a real Redis stopped and started, a real HTTP receiver."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from infra.manifest import MIGRATIONS_DIR, load_manifest
from local.alert_receiver import AlertReceiver
from local.postgres_server import PostgresServer
from local.processes import find_free_port
from local.redis_server import RedisServer
from local.scheduler import fire
from shared.core.auth import Role, issue_token
from shared.core.db import apply_migrations
from shared.core.settings import Settings
from tests.conftest import make_settings, wait_until
from tests.support.functions import ROOT, FunctionProcess
from tests.support.pii import EMAIL

pytestmark = pytest.mark.slow


@pytest.fixture
def receiver() -> Iterator[AlertReceiver]:
    running = AlertReceiver().start()
    yield running
    running.stop()


@pytest.fixture
def alert_db(deps, stack) -> Iterator[psycopg.Connection[Any]]:
    """Clean alert tables (the shared wipe does not know them)."""
    with psycopg.connect(stack.database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        conn.execute("TRUNCATE alert_states, alert_outbox RESTART IDENTITY")
        yield conn


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def watchdogs(stack, tmp_path: Path) -> Iterator[list[FunctionProcess]]:
    started: list[FunctionProcess] = []
    yield started
    for process in started:
        process.stop()


def start_watchdog(watchdogs: list[FunctionProcess], stack, tmp_path: Path, **env: str) -> FunctionProcess:
    process = FunctionProcess("alert_watchdog", {**stack.env(), "ALERT_RETRY_BASE_S": "0", **env}, tmp_path,
                              instance=f"watchdog-{len(watchdogs)}").start()
    watchdogs.append(process)
    return process


def tick(process: FunctionProcess, settings: Settings) -> int:
    """What the scheduler does every minute: POST the watchdog's route with a token."""
    return fire(process.url, load_manifest()["alert_watchdog"], issue_token(settings, role=Role.ADMIN, subject="tick"))


def events(receiver: AlertReceiver, event: str) -> list[tuple[str, str]]:
    return [(a["alert"]["state"], a["alert"]["level"]) for a in receiver.received if a["alert"]["event"] == event]


async def test_redis_stopped_fires_once_then_resolves_when_it_returns(deps, alert_db, receiver, own_redis, watchdogs,
                                                                       stack, tmp_path, settings, figures):
    watchdog = start_watchdog(watchdogs, stack, tmp_path, REDIS_URL=own_redis.url, ALERT_WEBHOOK_URL=receiver.url)
    assert tick(watchdog, settings) == 200
    assert events(receiver, "redis_unavailable") == []  # Redis up: nothing to say

    own_redis.stop()
    started = time.monotonic()
    assert tick(watchdog, settings) == 200
    fired_after = time.monotonic() - started
    assert events(receiver, "redis_unavailable") == [("firing", "ERROR")]
    first = next(a for a in receiver.received if a["alert"]["event"] == "redis_unavailable")
    assert first["text"].startswith("FIRING [ERROR] redis_unavailable")
    assert set(first["alert"]) == {"event", "level", "state", "message", "at"}

    for _ in range(2):  # the state lasts: no repeat
        assert tick(watchdog, settings) == 200
    assert events(receiver, "redis_unavailable") == [("firing", "ERROR")]

    own_redis.start()
    assert tick(watchdog, settings) == 200
    assert events(receiver, "redis_unavailable") == [("firing", "ERROR"), ("resolved", "ERROR")]
    assert tick(watchdog, settings) == 200
    assert len(events(receiver, "redis_unavailable")) == 2
    logged = alert_db.execute("SELECT event FROM system_health_logs WHERE event LIKE 'alert_%%' ORDER BY id").fetchall()
    assert [r["event"] for r in logged if r["event"] != "alert_delivery_failed"][-2:] == ["alert_firing",
                                                                                          "alert_resolved"]
    figures(watchdog_pass_with_redis_down_s=fired_after)


async def test_two_watchdogs_at_once_send_one_alert_per_transition(deps, alert_db, receiver, own_redis, watchdogs,
                                                                   stack, tmp_path, settings):
    env = {"REDIS_URL": own_redis.url, "ALERT_WEBHOOK_URL": receiver.url}
    pair = [start_watchdog(watchdogs, stack, tmp_path, **env), start_watchdog(watchdogs, stack, tmp_path, **env)]
    own_redis.stop()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda p: tick(p, settings), pair * 3))
    assert statuses == [200] * 6
    assert events(receiver, "redis_unavailable") == [("firing", "ERROR")]
    own_redis.start()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda p: tick(p, settings), pair * 3))
    assert events(receiver, "redis_unavailable") == [("firing", "ERROR"), ("resolved", "ERROR")]
    rows = alert_db.execute("SELECT count(*) AS n FROM alert_outbox WHERE alert_key = 'redis_unavailable'").fetchone()
    assert rows["n"] == 2


async def test_receiver_answering_500_then_200_gets_the_alert_once(deps, alert_db, receiver, own_redis, watchdogs,
                                                                   stack, tmp_path, settings):
    watchdog = start_watchdog(watchdogs, stack, tmp_path, REDIS_URL=own_redis.url, ALERT_WEBHOOK_URL=receiver.url)
    receiver.answers = [500]
    own_redis.stop()
    assert tick(watchdog, settings) == 200
    assert receiver.posts >= 1 and events(receiver, "redis_unavailable") == []
    row = alert_db.execute("SELECT status, attempts, last_error FROM alert_outbox"
                           " WHERE alert_key = 'redis_unavailable'").fetchone()
    assert (row["status"], row["attempts"], row["last_error"]) == ("pending", 1, "HTTP 500")
    failed = alert_db.execute("SELECT count(*) AS n FROM system_health_logs WHERE event = 'alert_delivery_failed'"
                              ).fetchone()
    assert failed["n"] == 1  # not silent
    for _ in range(3):
        assert tick(watchdog, settings) == 200
    assert events(receiver, "redis_unavailable") == [("firing", "ERROR")]


async def test_slow_webhook_keeps_alerts_queued_and_the_watchdog_bounded(deps, alert_db, receiver, own_redis,
                                                                         watchdogs, stack, tmp_path, settings,
                                                                         figures):
    watchdog = start_watchdog(watchdogs, stack, tmp_path, REDIS_URL=own_redis.url, ALERT_WEBHOOK_URL=receiver.url,
                              ALERT_TIMEOUT_S="1")
    receiver.delay_s = 10
    own_redis.stop()
    started = time.monotonic()
    assert tick(watchdog, settings) == 200
    slow_pass = time.monotonic() - started
    assert slow_pass < 8  # one timeout, not one per alert nor the receiver's 10 s
    row = alert_db.execute("SELECT status FROM alert_outbox WHERE alert_key = 'redis_unavailable'").fetchone()
    assert row["status"] == "pending"
    receiver.delay_s = 0
    await asyncio.sleep(0.2)
    assert tick(watchdog, settings) == 200
    firing = [e for e in events(receiver, "redis_unavailable") if e[0] == "firing"]
    # the slow receiver may have kept the first POST after our timeout: at-least-once, and the retry always arrives
    assert 1 <= len(firing) <= 2
    assert alert_db.execute("SELECT status FROM alert_outbox WHERE alert_key = 'redis_unavailable'"
                            ).fetchone()["status"] == "sent"
    figures(watchdog_pass_with_10s_webhook_s=slow_pass)


async def test_alerts_and_their_health_events_carry_no_address(deps, alert_db, receiver, own_redis, watchdogs, stack,
                                                               tmp_path, settings, db):
    db.execute("INSERT INTO creation_requests (id, actor, body_hash, email, email_normalized, full_name, status,"
               " mode, error) VALUES ('req_pii', 'sales-1', 'h', 'secret.person@example.com',"
               " 'secret.person@example.com', 'Secret Person', 'failed', 'async_queue', 'boom')")
    watchdog = start_watchdog(watchdogs, stack, tmp_path, REDIS_URL=own_redis.url, ALERT_WEBHOOK_URL=receiver.url,
                              ALERT_EMAILS="ops@example.com")
    assert tick(watchdog, settings) == 200
    assert ("firing", "ERROR") in events(receiver, "creation_failed")
    for alert in receiver.received:
        text = repr(alert).encode()
        assert not EMAIL.search(text) and b"Secret Person" not in text
    emails = [m for m in stack.ses.sent_messages() if "ops@example.com" in m["to"]]
    assert any("creation_failed" in m["subject"] for m in emails)  # ALERT_EMAILS through SES
    for row in db.execute("SELECT message || metadata::text AS t FROM system_health_logs WHERE event LIKE 'alert%%'"):
        assert not EMAIL.search(row["t"].encode())


def test_bad_webhook_url_is_refused_naming_the_variable(stack, tmp_path):
    for bad in ("not a url", "ftp://example.net/hook"):
        with pytest.raises(ValidationError, match="ALERT_WEBHOOK_URL"):
            make_settings(stack, ALERT_WEBHOOK_URL=bad)
    env = {**os.environ, **stack.env(), "ALERT_WEBHOOK_URL": "hooks.example.net/no-scheme"}
    done = subprocess.run([sys.executable, "-m", "functions.consumer"], cwd=ROOT, env=env, capture_output=True,
                          timeout=60, check=False)
    assert done.returncode != 0
    assert b"ALERT_WEBHOOK_URL" in done.stderr + done.stdout
    dev = subprocess.run([sys.executable, "-m", "invoke", "dev", "--port", str(find_free_port())], cwd=ROOT,
                         env={**env, "APP_ENV": "development"}, capture_output=True, timeout=120, check=False)
    assert dev.returncode == 1
    assert b"FAILED: ALERT_WEBHOOK_URL is not an http(s) URL" in dev.stdout


async def test_postgres_stopped_alerts_once_through_redis_then_resolves(deps, receiver, watchdogs, stack, tmp_path,
                                                                       settings):
    pg = PostgresServer(tmp_path / "pg", durable=False)
    pg.start()
    try:
        url = pg.create_database("alerts")
        apply_migrations(url, MIGRATIONS_DIR)
        env = {"DATABASE_URL": url, "ALERT_WEBHOOK_URL": receiver.url, "DB_TIMEOUT_S": "0.5"}
        pair = [start_watchdog(watchdogs, stack, tmp_path, **env), start_watchdog(watchdogs, stack, tmp_path, **env)]
        assert tick(pair[0], settings) == 200
        pg.stop()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            assert list(pool.map(lambda p: tick(p, settings), pair * 2)) == [200] * 4
        assert events(receiver, "database_unavailable") == [("firing", "ERROR")]
        pg.start()
        await wait_until(lambda: tick(pair[1], settings) == 200 and events(receiver, "database_unavailable")[1:],
                         timeout=20, interval=0.5)
        assert tick(pair[0], settings) == 200
        assert events(receiver, "database_unavailable") == [("firing", "ERROR"), ("resolved", "ERROR")]
        with psycopg.connect(url, autocommit=True) as conn:  # the episode is in the history once PostgreSQL is back
            states = [r[0] for r in conn.execute("SELECT state FROM alert_outbox WHERE alert_key ="
                                                 " 'database_unavailable' ORDER BY version")]
        assert states == ["firing", "resolved"]
    finally:
        pg.stop()
