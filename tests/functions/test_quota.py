"""The per-caller creation quota (CREATE_QUOTA_PER_MINUTE) and the one welcome-email rate (EMAIL_RATE_PER_S),
both shared by every instance through the real Redis."""

from __future__ import annotations

import asyncio
import math
import time

from shared.creation.outbox import deliver_pending
from tests.conftest import auth, use_deps, wait_until
from tests.functions.test_create_user import set_mode


def new_user(i: int, tag: str = "q") -> dict[str, str]:
    return {"email": f"{tag}-{i}@example.com", "full_name": f"Quota {i}"}


def count(db, sql: str, *params) -> int:
    return db.execute(sql, params).fetchone()["n"]


async def test_over_the_quota_is_429_with_retry_after_and_writes_nothing(monkeypatch, call, tokens, db, deps,
                                                                         deps_factory):
    use_deps(monkeypatch, await deps_factory(CREATE_QUOTA_PER_MINUTE=3, NO_CONSUMER_FALLBACK=False))
    sales = auth(tokens["sales_manager"])
    for i in range(3):
        assert (await call("create_user", "POST", "/api/users", headers=sales, json=new_user(i))).status_code == 202
    before = count(db, "SELECT count(*) AS n FROM creation_requests")
    refused = await call("create_user", "POST", "/api/users", headers=sales, json=new_user(3))
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limited"
    retry_after = refused.headers["retry-after"]
    assert retry_after.isascii() and retry_after.isdigit() and 1 <= int(retry_after) <= 60
    assert count(db, "SELECT count(*) AS n FROM creation_requests") == before == 3
    assert (await deps.queue.counts())["waiting"] == 3  # nothing queued for the refused one
    assert count(db, "SELECT count(*) AS n FROM creation_requests WHERE email_normalized = %s",
                 "q-3@example.com") == 0
    # Another caller has a quota of its own.
    other = await call("create_user", "POST", "/api/users", headers=auth(tokens["other_sales"]), json=new_user(4))
    assert other.status_code == 202


async def test_every_instance_shares_one_count(monkeypatch, call, tokens, deps, deps_factory):
    first = await deps_factory(CREATE_QUOTA_PER_MINUTE=4, NO_CONSUMER_FALLBACK=False)
    second = await deps_factory(CREATE_QUOTA_PER_MINUTE=4, NO_CONSUMER_FALLBACK=False)
    sales = auth(tokens["sales_manager"])
    codes = []
    for i in range(6):
        use_deps(monkeypatch, first if i % 2 else second)
        codes.append((await call("create_user", "POST", "/api/users", headers=sales, json=new_user(i))).status_code)
    assert codes == [202, 202, 202, 202, 429, 429]


async def test_replays_and_refusals_do_not_use_up_the_quota(monkeypatch, call, tokens, deps, deps_factory):
    use_deps(monkeypatch, await deps_factory(CREATE_QUOTA_PER_MINUTE=2, NO_CONSUMER_FALLBACK=False))
    sales = {**auth(tokens["sales_manager"]), "Idempotency-Key": "replayed"}
    for _ in range(5):  # one request, four replays of it
        assert (await call("create_user", "POST", "/api/users", headers=sales, json=new_user(0))).status_code == 202
    invalid = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]),
                         json={"email": "not-an-address"})
    assert invalid.status_code == 422
    second = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]), json=new_user(1))
    assert second.status_code == 202
    third = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]), json=new_user(2))
    assert third.status_code == 429


async def test_a_bulk_charge_counts_all_its_rows_or_none(deps, deps_factory):
    quota = (await deps_factory(CREATE_QUOTA_PER_MINUTE=5, NO_CONSUMER_FALLBACK=False)).quota
    assert (await quota.charge("bulk-caller", 3)).allowed
    too_many = await quota.charge("bulk-caller", 3)
    assert not too_many.allowed and 1 <= too_many.retry_after_s <= 60
    assert (await quota.charge("bulk-caller", 2)).allowed
    assert not (await quota.charge("bulk-caller", 1)).allowed
    # The caller's key holds a hash, not the caller's `sub`.
    assert "bulk-caller" not in quota.key("bulk-caller")


async def test_retry_after_says_when_the_oldest_counted_creation_leaves_the_window(deps, deps_factory):
    quota = (await deps_factory(CREATE_QUOTA_PER_MINUTE=2, NO_CONSUMER_FALLBACK=False)).quota
    assert (await quota.charge("window", 2)).allowed
    await asyncio.sleep(1.2)
    refused = await quota.charge("window")
    # Both were counted ~1.2 s ago: room again in 60 - 1.2 s, rounded up to whole seconds.
    assert not refused.allowed and refused.retry_after_s == 59


async def test_redis_down_fails_open_with_one_warning_per_transition(monkeypatch, call, tokens, db, deps,
                                                                     deps_factory, proxy):
    instance = await deps_factory(REDIS_URL=proxy.url, CREATE_QUOTA_PER_MINUTE=2, NO_CONSUMER_FALLBACK=False,
                                  BREAKER_OPEN_S=0.3,
                                  BREAKER_PROBE_INTERVAL_S=0.05)
    use_deps(monkeypatch, instance)
    sales = auth(tokens["sales_manager"])
    assert (await call("create_user", "POST", "/api/users", headers=sales, json=new_user(0))).status_code == 202
    proxy.set_mode("refuse")
    codes = [(await call("create_user", "POST", "/api/users", headers=sales, json=new_user(i))).status_code
             for i in range(1, 5)]
    assert codes == [201, 201, 201, 201]  # over the quota of 2, but Redis cannot count: served, not refused
    assert count(db, "SELECT count(*) AS n FROM system_health_logs WHERE event = 'quota_unavailable'"
                     " AND level = 'WARNING'") == 1
    proxy.set_mode("pass")
    await wait_until(lambda: not instance.breaker.is_open, timeout=10)
    answer = await call("create_user", "POST", "/api/users", headers=sales, json=new_user(5))
    assert answer.status_code == 202  # the second counted one: those served while failing open were not counted
    assert count(db, "SELECT count(*) AS n FROM system_health_logs WHERE event = 'quota_restored'") == 1
    assert (await call("create_user", "POST", "/api/users", headers=sales, json=new_user(6))).status_code == 429


async def test_one_email_rate_for_every_sender_and_instance(monkeypatch, call, tokens, db, stack, deps, deps_factory):
    """Sync creations on two instances in a burst: only the rate's slots send now, the rest wait in the outbox
    (one WARNING), and a later outbox pass sends them, still at the rate."""
    rate = 2
    first = await deps_factory(EMAIL_RATE_PER_S=rate, EMAIL_RATE_WAIT_S=0, INSTANCE_NAME="rate-first")
    second = await deps_factory(EMAIL_RATE_PER_S=rate, EMAIL_RATE_WAIT_S=0, INSTANCE_NAME="rate-second")
    await set_mode(call, tokens, "sync_direct")
    sales = auth(tokens["sales_manager"])
    before = len(stack.ses.sent_messages())
    started = time.monotonic()
    for i in range(8):
        use_deps(monkeypatch, first if i % 2 else second)
        r = await call("create_user", "POST", "/api/users", headers=sales, json=new_user(i, "rate"))
        assert r.status_code == 201, r.text
    elapsed = time.monotonic() - started
    sent_now = len(stack.ses.sent_messages()) - before
    assert 1 <= sent_now <= rate * (1 + math.floor(elapsed))
    pending = count(db, "SELECT count(*) AS n FROM email_outbox WHERE status = 'pending'")
    assert pending == 8 - sent_now > 0
    # One WARNING per instance when it starts holding emails back, never one per held email: per instance the
    # events alternate saturated (WARNING) / clear (INFO), starting with saturated.
    events = db.execute("SELECT source, event, level FROM system_health_logs WHERE event IN"
                        " ('email_rate_saturated', 'email_rate_clear') ORDER BY id").fetchall()
    assert any(e["event"] == "email_rate_saturated" for e in events)
    for instance in {e["source"] for e in events}:
        sequence = [(e["event"], e["level"]) for e in events if e["source"] == instance]
        expected = [("email_rate_saturated", "WARNING"), ("email_rate_clear", "INFO")] * len(sequence)
        assert sequence == expected[:len(sequence)], (instance, sequence)
    # The outbox pass (what the consumer runs) drains them, waiting for slots.
    drainer = await deps_factory(EMAIL_RATE_PER_S=rate, EMAIL_RATE_WAIT_S=5)
    drain_started = time.monotonic()
    report = await deliver_pending(drainer.pool, drainer.mailer, drainer.settings, source="test", limit=50)
    drain_s = time.monotonic() - drain_started
    assert report.sent == pending and len(stack.ses.sent_messages()) - before == 8
    # `pending` emails at `rate` per second, and the slots of the burst still count for the first second.
    assert drain_s >= (pending - rate) / rate - 0.5
