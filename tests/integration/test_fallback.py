"""Automatic fallback to the sync path when Redis is down, hanging or refusing; and the way back."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.redis_server import RedisServer
from shared.core.auth import Principal, Role
from shared.creation.creation import create_user_request
from shared.creation.models import CreateUserCommand
from tests.conftest import wait_until

SALES = Principal("sales-1", Role.SALES_MANAGER)


def command(i: int) -> CreateUserCommand:
    return CreateUserCommand(email=f"fallback{i}@example.com", full_name=f"Fallback {i}")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    if server.is_running():
        server.signal(signal.SIGCONT)
    server.stop()


async def timed(deps, i: int) -> tuple[float, object]:
    started = time.perf_counter()
    answer = await create_user_request(deps, SALES, command(i), None)
    return time.perf_counter() - started, answer


def events(db, event: str) -> list[dict]:
    return db.execute("SELECT level, metadata FROM system_health_logs WHERE event = %s ORDER BY id",
                      (event,)).fetchall()


async def test_redis_stopped_falls_back_within_1s_then_returns_to_queue(deps, deps_factory, own_redis, db):
    instance = await deps_factory(REDIS_URL=own_redis.url, BREAKER_OPEN_S=0.3, BREAKER_PROBE_INTERVAL_S=0.05,
                                  NO_CONSUMER_FALLBACK=False)
    _, queued = await timed(instance, 0)
    assert queued.status == 202

    own_redis.stop()
    elapsed, answer = await timed(instance, 1)
    assert elapsed < 1.0
    assert answer.status == 201 and answer.body["fallback"] is True and answer.body["mode"] == "sync_direct"
    # The breaker is open: the next requests do not even try Redis.
    elapsed, answer = await timed(instance, 2)
    assert answer.status == 201 and elapsed < 0.5
    assert [e["level"] for e in events(db, "queue_fallback")] == ["WARNING"]
    switch = events(db, "effective_mode_changed")
    assert switch[0]["level"] == "SWITCH" and switch[0]["metadata"]["to"] == "sync_direct"
    row = db.execute("SELECT mode, fallback, fallback_reason, status FROM creation_requests "
                     "WHERE email = 'fallback1@example.com'").fetchone()
    assert row == {"mode": "sync_direct", "fallback": True, "fallback_reason": "redis_unavailable",
                   "status": "created"}

    own_redis.start()
    await wait_until(lambda: not instance.breaker.is_open, timeout=5)
    _, answer = await timed(instance, 3)
    assert answer.status == 202
    back = events(db, "effective_mode_changed")
    assert [e["metadata"]["to"] for e in back] == ["sync_direct", "async_queue"]


async def test_redis_hanging_process_falls_back_within_1s(deps, deps_factory, own_redis):
    instance = await deps_factory(REDIS_URL=own_redis.url, NO_CONSUMER_FALLBACK=False)
    own_redis.signal(signal.SIGSTOP)
    try:
        elapsed, answer = await timed(instance, 1)
    finally:
        own_redis.signal(signal.SIGCONT)
    assert answer.status == 201 and answer.body["fallback"] is True
    assert elapsed < 1.0


@pytest.mark.parametrize("mode", ["blackhole", "refuse"])
async def test_blackholed_or_refused_redis_falls_back_within_1s(deps, deps_factory, proxy, db, mode):
    instance = await deps_factory(REDIS_URL=proxy.url, BREAKER_OPEN_S=0.3, BREAKER_PROBE_INTERVAL_S=0.05,
                                  NO_CONSUMER_FALLBACK=False)  # the breaker is under test; no consumer runs
    assert (await timed(instance, 0))[1].status == 202
    proxy.set_mode(mode)
    elapsed, answer = await timed(instance, 1)
    assert answer.status == 201 and answer.body["fallback"] is True
    assert elapsed < 1.0
    proxy.set_mode("pass")
    await wait_until(lambda: not instance.breaker.is_open, timeout=5)
    assert (await timed(instance, 2))[1].status == 202
    users = db.execute("SELECT count(*) AS n FROM users").fetchone()["n"]
    assert users == 1


async def test_metrics_answer_within_1s_with_redis_hanging(deps, deps_factory, proxy):
    from shared.operations.admin import system_metrics

    instance = await deps_factory(REDIS_URL=proxy.url)
    proxy.set_mode("blackhole")
    started = time.perf_counter()
    metrics = await system_metrics(instance)
    assert time.perf_counter() - started < 1.0
    assert metrics["redis"] == {"available": False, "latency_ms": None}
    assert metrics["queue"] is None
    assert metrics["effective_mode"] == "sync_direct" and metrics["effective_reason"] == "redis_unavailable"


async def test_flapping_redis_gives_a_bounded_number_of_switch_events(deps, deps_factory, proxy, db):
    instance = await deps_factory(REDIS_URL=proxy.url, BREAKER_OPEN_S=1.0, BREAKER_PROBE_INTERVAL_S=0.05,
                                  NO_CONSUMER_FALLBACK=False)  # the breaker is under test; no consumer runs
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < 3.0:
        proxy.set_mode("refuse" if int((time.perf_counter() - started) * 4) % 2 else "pass")
        answer = await create_user_request(instance, SALES, command(i), None)
        assert answer.status in (201, 202)
        i += 1
    switches = len(events(db, "effective_mode_changed"))
    # At most one open/close cycle per BREAKER_OPEN_S (1 s) over 3 s, whatever the number of requests.
    assert i > 20
    assert 2 <= switches <= 2 * 3 + 1  # it did open and close again, and no more often than the breaker allows
    assert [e["metadata"]["to"] for e in events(db, "effective_mode_changed")][:2] == ["sync_direct", "async_queue"]
