"""Kill-switch propagation across instances, one code path for every creator, PostgreSQL down, no PII in Redis."""

from __future__ import annotations

import asyncio
import time

from shared.core.auth import Principal, Role
from shared.core.errors import DatabaseUnavailable
from shared.creation.creation import create_user_request
from shared.creation.models import CreateUserCommand, SetModeCommand, TrafficMode
from shared.creation.provisioning import provision
from shared.creation.traffic import set_mode
from tests.conftest import auth, use_deps, wait_until
from tests.functions.test_create_user import BODY
from tests.support.pii import find_secrets
from tests.support.stack import TEST_JWT_SECRET

SALES = Principal("sales-1", Role.SALES_MANAGER)


async def test_switch_reaches_another_instance_within_2s(deps, deps_factory):
    a = await deps_factory(MODE_CACHE_TTL_S=1.0)
    b = await deps_factory(MODE_CACHE_TTL_S=1.0, NO_CONSUMER_FALLBACK=False)  # no consumer runs: only the switch
    # may turn b's answers into 201s
    first = await create_user_request(b, SALES, CreateUserCommand(email="p0@example.com", full_name="P"), None)
    assert first.status == 202  # b has now cached async_queue
    await set_mode(a.pool, SetModeCommand(mode=TrafficMode.SYNC_DIRECT, reason="propagation test"),
                   actor="admin-1", source="test")
    flipped = time.perf_counter()
    i = 1
    while True:
        answer = await create_user_request(b, SALES, CreateUserCommand(email=f"p{i}@example.com", full_name="P"),
                                           None)
        if answer.status == 201:
            break
        assert time.perf_counter() - flipped < 2.0, "instance b still queues 2 s after the switch"
        i += 1
        await asyncio.sleep(0.05)
    assert time.perf_counter() - flipped <= 2.0


async def _obeys(instance, mode: TrafficMode) -> bool:
    return (await instance.mode_cache.current()).mode == mode


def _listener_pids(db, role: str) -> list[int]:
    rows = db.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                      (f"{role}-mode-listener",)).fetchall()
    return [row["pid"] for row in rows]


async def test_a_flip_reaches_another_instance_at_once_not_after_its_ttl(deps, deps_factory, call, tokens, db):
    """Instance b caches the switch for 2 s; a flip made through set_mode on another instance reaches it well
    before that: PostgreSQL announces it (LISTEN/NOTIFY) and b reads the switch again on its next request."""
    b = await deps_factory(MODE_CACHE_TTL_S=2.0)
    assert await _obeys(b, TrafficMode.ASYNC_QUEUE)
    await wait_until(lambda: b.mode_cache.listening)
    assert len(_listener_pids(db, "test-instance")) == 1  # one connection of its own, outside the pool
    assert await _obeys(b, TrafficMode.ASYNC_QUEUE)  # read just now: its TTL alone would hold it for 2 s
    r = await call("set_mode", "POST", "/api/admin/system/mode", headers=auth(tokens["admin"]),
                   json={"mode": "sync_direct", "reason": "notify test"})
    assert r.status_code == 200
    await wait_until(lambda: _obeys(b, TrafficMode.SYNC_DIRECT), timeout=0.5, interval=0.01)


async def test_a_terminated_listener_comes_back_and_the_switch_is_followed_meanwhile(deps, deps_factory, db,
                                                                                   caplog):
    b = await deps_factory(MODE_CACHE_TTL_S=2.0)
    assert await _obeys(b, TrafficMode.ASYNC_QUEUE)
    await wait_until(lambda: b.mode_cache.listening)
    [old] = _listener_pids(db, "test-instance")
    db.execute("SELECT pg_terminate_backend(%s)", (old,))
    await set_mode(deps.pool, SetModeCommand(mode=TrafficMode.SYNC_DIRECT, reason="listener lost"),
                   actor="admin-1", source="test")
    # Followed within the TTL whether or not the listener is back yet.
    await wait_until(lambda: _obeys(b, TrafficMode.SYNC_DIRECT), timeout=2.5, interval=0.02)
    assert "traffic mode listener down" in caplog.text
    await wait_until(lambda: b.mode_cache.listening and _listener_pids(db, "test-instance") not in ([], [old]))
    assert await _obeys(b, TrafficMode.SYNC_DIRECT)  # a read now: the TTL would hold the next flip for 2 s
    await set_mode(deps.pool, SetModeCommand(mode=TrafficMode.ASYNC_QUEUE, reason="listener back"),
                   actor="admin-1", source="test")
    await wait_until(lambda: _obeys(b, TrafficMode.ASYNC_QUEUE), timeout=0.5, interval=0.01)


async def test_last_known_mode_stays_when_postgres_is_unreachable(deps):
    cache = deps.mode_cache
    state = await cache.current()
    cache._read_at = 0.0  # expire it
    real_pool = cache._pool
    from shared.core.db import make_pool

    dead = make_pool("postgresql://postgres@127.0.0.1:9/none", min_size=0, max_size=1, timeout_s=0.3,
                     name="dead")
    await dead.open(wait=False)
    cache._pool = dead
    try:
        assert (await cache.current()).mode == state.mode
    finally:
        cache._pool = real_pool
        await dead.close()


async def test_fallback_consumer_and_retry_race_make_one_user(deps, db):
    """An enqueue that timed out but landed: the fallback and the consumer both run provision()."""
    answer = await create_user_request(deps, SALES, CreateUserCommand(email="race@example.com", full_name="R"),
                                       None)
    request_id = answer.body["request_id"]
    outcomes = await asyncio.gather(
        provision(deps.pool, request_id, source="t", via="fallback"),
        provision(deps.pool, request_id, source="t", via="consumer"),
        provision(deps.pool, request_id, source="t", via="consumer"),
    )
    assert {o.status for o in outcomes} == {"created"}
    assert sum(not o.already_done for o in outcomes) == 1
    assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 1
    assert db.execute("SELECT count(*) AS n FROM email_outbox").fetchone()["n"] == 1


async def test_postgres_unreachable_is_503_with_retry_after_and_nothing_queued(deps, deps_factory, call, tokens,
                                                                                monkeypatch):
    broken = await deps_factory(DATABASE_URL="postgresql://postgres@127.0.0.1:9/none", DB_TIMEOUT_S=0.5)
    use_deps(monkeypatch, broken)
    r = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]), json=BODY)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "database_unavailable" and r.headers["retry-after"]
    assert await deps.queue.counts() == {"waiting": 0, "active": 0, "completed": 0, "failed": 0, "delayed": 0}
    try:
        await broken.mode_cache.current()
    except DatabaseUnavailable:
        pass
    else:
        raise AssertionError("an unreachable database must not yield a mode")


async def test_redis_and_health_logs_hold_no_address_or_secret(call, tokens, stack, db):
    for i, mode in enumerate(["async_queue", "sync_direct", "async_queue"]):
        await call("set_mode", "POST", "/api/admin/system/mode", headers=auth(tokens["admin"]),
                   json={"mode": mode, "reason": f"pii scan {i}"})
        for j in range(3):
            r = await call("create_user", "POST", "/api/users",
                           headers={**auth(tokens["sales_manager"]), "Idempotency-Key": f"k{i}{j}"},
                           json={**BODY, "email": f"secret.person{i}{j}@example.com", "phone": "+15550100"})
            assert r.status_code in (201, 202)
    forbidden = [TEST_JWT_SECRET.encode(), tokens["sales_manager"].encode(), b"+15550100", b"secret.person"]
    assert db.execute("SELECT count(*) AS n FROM system_health_logs").fetchone()["n"] > 0
    assert find_secrets(stack.redis_url, stack.queue_prefix, stack.database_url, forbidden) == []
