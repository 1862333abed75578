"""Kill-switch propagation across instances, one code path for every creator, PostgreSQL down, no PII in Redis."""

from __future__ import annotations

import asyncio
import time

from shared.auth import Principal, Role
from shared.creation import create_user_request
from shared.errors import DatabaseUnavailable
from shared.models import CreateUserCommand, SetModeCommand, TrafficMode
from shared.provisioning import provision
from shared.traffic import set_mode
from tests.conftest import auth, use_deps
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


async def test_last_known_mode_stays_when_postgres_is_unreachable(deps):
    cache = deps.mode_cache
    state = await cache.current()
    cache._read_at = 0.0  # expire it
    real_pool = cache._pool
    from shared.db import make_pool

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
