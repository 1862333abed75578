"""The consumer as a real process against real Redis and PostgreSQL: rate, retries, crashes, liveness."""

from __future__ import annotations

import asyncio
import itertools
import signal
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

from bench.report import max_in_window
from local.redis_server import RedisServer
from shared.core.auth import Principal, Role
from shared.creation.creation import create_user_request
from shared.creation.models import CreateUserCommand
from tests.conftest import wait_until
from tests.support.processes import ConsumerProcess
from tests.support.proxy import FaultProxy
from tests.support.traps import before_insert

pytestmark = pytest.mark.slow
SALES = Principal("sales-1", Role.SALES_MANAGER)
FAST_RECOVERY = {"CONSUMER_LOCK_MS": "2000", "CONSUMER_STALLED_INTERVAL_MS": "1000", "CONSUMER_HEARTBEAT_S": "0.5",
                 "RECONCILE_GRACE_S": "0", "RECONCILE_INTERVAL_S": "1", "CONSUMER_SHUTDOWN_GRACE_S": "10"}


def start_consumer(consumers, stack, tmp_path, env=None, **overrides) -> ConsumerProcess:
    process = ConsumerProcess({**stack.env(), **(env or {})}, tmp_path, **overrides)
    consumers.append(process)
    return process.start(stack.database_url)


@pytest.fixture
def trap(db):
    """PostgreSQL-side faults for chosen addresses: 'fail-*' always fails, 'slow-*' sleeps 2 s."""
    with before_insert(db, "users", "IF NEW.email LIKE 'fail-%' THEN RAISE EXCEPTION 'trap: refusing this row'; END IF;"
                                    " IF NEW.email LIKE 'slow-%' THEN PERFORM pg_sleep(2); END IF;"):
        yield


async def submit(deps, emails: list[str]) -> list[str]:
    ids = []
    for email in emails:
        answer = await create_user_request(deps, SALES, CreateUserCommand(email=email, full_name="Q"), None)
        assert answer.status == 202, answer.body
        ids.append(answer.body["request_id"])
    return ids


def statuses(db, ids: list[str]) -> dict[str, str]:
    rows = db.execute("SELECT id, status FROM creation_requests WHERE id = ANY(%s)", (ids,)).fetchall()
    return {r["id"]: r["status"] for r in rows}


async def all_done(db, ids: list[str], timeout: float) -> dict[str, str]:
    await wait_until(lambda: all(s in ("created", "failed") for s in statuses(db, ids).values()), timeout=timeout,
                     interval=0.2)
    return statuses(db, ids)


def start_times(db) -> list[float]:
    return [r["t"] for r in db.execute("SELECT extract(epoch FROM started_at)::float8 AS t FROM creation_attempts")]


@pytest.mark.parametrize("instances", [1, 2])
async def test_default_rate_limit_holds_globally(deps, consumers, stack, tmp_path, db, instances):
    for _ in range(instances):
        start_consumer(consumers, stack, tmp_path)
    ids = await submit(deps, [f"rate{instances}-{i}@example.com" for i in range(30)])
    assert set((await all_done(db, ids, timeout=30)).values()) == {"created"}
    starts = start_times(db)
    assert len(starts) == 30
    assert max_in_window([t * 1000 for t in starts], 1000) <= 10  # the limiter's own rule
    span = max(starts) - min(starts)
    assert 1.9 <= span <= 4.0, span  # 30 starts at 10/s: three windows, about 2 s from first to last start
    if instances == 2:
        used = {r["consumer"] for r in db.execute("SELECT DISTINCT consumer FROM creation_attempts")}
        assert len(used) == 2


async def test_failing_job_retries_at_2_4_8_s_then_fails_visibly(deps, consumers, stack, tmp_path, db, trap, call,
                                                                 tokens):
    start_consumer(consumers, stack, tmp_path)
    [request_id] = await submit(deps, ["fail-always@example.com"])
    assert (await all_done(db, [request_id], timeout=30))[request_id] == "failed"
    rows = db.execute("SELECT attempt, extract(epoch FROM started_at)::float8 AS t, outcome FROM creation_attempts"
                      " ORDER BY attempt").fetchall()
    assert [r["attempt"] for r in rows] == [1, 2, 3, 4]
    assert [r["outcome"] for r in rows] == ["retry", "retry", "retry", "failed"]
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(rows)]
    for gap, expected in zip(gaps, [2, 4, 8], strict=True):
        assert expected - 0.2 <= gap <= expected + 1.5, gaps
    from tests.conftest import auth

    status = (await call("request_status", "GET", f"/api/users/requests/{request_id}",
                         headers=auth(tokens["sales_manager"]))).json()
    assert status["status"] == "failed" and status["attempts"] == 4 and "RaiseException" in status["error"]
    levels = [r["level"] for r in db.execute("SELECT level FROM system_health_logs WHERE event IN"
                                             " ('creation_retry', 'creation_failed') ORDER BY id")]
    assert levels == ["WARNING", "WARNING", "WARNING", "ERROR"]
    metrics = (await call("system_metrics", "GET", "/api/admin/system/metrics", headers=auth(tokens["admin"]))).json()
    assert metrics["queue"]["failed"] == 1 and metrics["totals"]["failed"] == 1


async def test_a_retry_after_more_than_10s_idle_is_not_stalled(deps_factory, deps, consumers, stack, tmp_path, db,
                                                               trap):
    start_consumer(consumers, stack, tmp_path)
    enqueuer = await deps_factory(JOB_ATTEMPTS=2, JOB_BACKOFF_MS=11000)
    [request_id] = await submit(enqueuer, ["fail-idle@example.com"])
    assert (await all_done(db, [request_id], timeout=30))[request_id] == "failed"
    t1, t2 = (r["t"] for r in db.execute("SELECT extract(epoch FROM started_at)::float8 AS t FROM creation_attempts"
                                         " ORDER BY attempt"))
    assert 10.8 <= t2 - t1 <= 12.5


async def test_unrecoverable_input_fails_at_once(deps, consumers, stack, tmp_path, db):
    start_consumer(consumers, stack, tmp_path)
    [first] = await submit(deps, ["twice@example.com"])
    assert (await all_done(db, [first], timeout=10))[first] == "created"
    db.execute("INSERT INTO creation_requests (id, actor, body_hash, email, email_normalized, full_name, mode)"
               " VALUES ('req_dup', 'x', 'h', 'TWICE@example.com', 'twice@example.com', 'T', 'async_queue')")
    await deps.queue.enqueue("req_dup")
    assert (await all_done(db, ["req_dup"], timeout=10))["req_dup"] == "failed"
    attempts = db.execute("SELECT count(*) AS n FROM creation_attempts WHERE request_id = 'req_dup'").fetchone()
    assert attempts["n"] == 1
    assert db.execute("SELECT error_code FROM creation_requests WHERE id = 'req_dup'").fetchone() == {
        "error_code": "user_exists"}


async def test_sigkill_mid_job_completes_once_on_another_consumer(deps, consumers, stack, tmp_path, db, trap):
    doomed = start_consumer(consumers, stack, tmp_path, env=FAST_RECOVERY)
    [request_id] = await submit(deps, ["slow-kill@example.com"])
    await wait_until(lambda: db.execute("SELECT 1 FROM creation_attempts").fetchone(), timeout=10)
    doomed.signal(signal.SIGKILL)
    doomed.wait(5)
    start_consumer(consumers, stack, tmp_path, env=FAST_RECOVERY)
    assert (await all_done(db, [request_id], timeout=30))[request_id] == "created"
    assert db.execute("SELECT count(*) AS n FROM users WHERE email = 'slow-kill@example.com'").fetchone()["n"] == 1
    # Its email recorded as sent (not a fixed pause: the first SES call of a consumer takes a while under load).
    await wait_until(lambda: db.execute("SELECT 1 FROM email_outbox o JOIN users u ON u.id = o.user_id"
                                        " WHERE u.email = 'slow-kill@example.com' AND o.status = 'sent'").fetchone(),
                     timeout=30)
    # Every email ever sent to the address: the killed consumer may have sent it before it died (on a loaded
    # machine it can get that far); the redelivery must not send it again.
    sent = [m for m in stack.ses.sent_messages() if m["to"] == ["slow-kill@example.com"]]
    assert len(sent) == 1
    consumers_used = {r["consumer"] for r in db.execute("SELECT consumer FROM creation_attempts")}
    assert len(consumers_used) == 2


async def test_killed_after_the_creation_committed_the_redelivery_sends_the_email_at_once(deps, consumers, stack,
                                                                                          tmp_path, db, figures):
    """The window between the creation's commit and the email's record: the first consumer's SES is a black hole
    (its request reaches the proxy, no answer comes), so it is SIGKILLed while it waits on SES, its user committed
    and its welcome email claimed (leased) but not recorded. The job's redelivery, on a second consumer, takes the
    unrecorded claim over and sends the email: once, and before the first claim's lease ends (the periodic pass
    would only send it after that)."""
    target = urlsplit(stack.ses_url)
    ses = await FaultProxy(target.hostname, target.port).start()
    ses.set_mode("blackhole")
    try:
        doomed = await asyncio.to_thread(start_consumer, consumers, stack, tmp_path,
                                         env={**FAST_RECOVERY, "AWS_ENDPOINT_URL_SES": f"http://127.0.0.1:{ses.port}"})
        address = "window-kill@example.com"
        [request_id] = await submit(deps, [address])
        claim = await wait_until(lambda: db.execute(
            "SELECT o.claimed_by, o.next_attempt_at, o.status, o.attempts FROM email_outbox o"
            " JOIN users u ON u.id = o.user_id WHERE u.email = %s", (address,)).fetchone(), timeout=15)
        await wait_until(lambda: ses.bytes_from_clients > 0, timeout=15)  # its SES request is on the wire
        doomed.signal(signal.SIGKILL)
        killed_at = db.execute("SELECT now() AS t").fetchone()["t"]
        doomed.wait(5)
    finally:
        await ses.stop()
    # Killed inside the window: the user and its claimed outbox row committed, no email recorded or accepted.
    assert claim["status"] == "pending" and claim["attempts"] == 0 and claim["claimed_by"] is not None
    assert statuses(db, [request_id]) == {request_id: "created"}
    assert [m for m in stack.ses.sent_messages() if m["to"] == [address]] == []
    first_lease_ends = claim["next_attempt_at"]
    assert (first_lease_ends - killed_at).total_seconds() > 5  # the lease had seconds to run at the kill

    start_consumer(consumers, stack, tmp_path, env=FAST_RECOVERY)
    sent = await wait_until(lambda: db.execute(
        "SELECT o.sent_at, o.claimed_by, o.attempts FROM email_outbox o JOIN users u ON u.id = o.user_id"
        " WHERE u.email = %s AND o.status = 'sent'", (address,)).fetchone(), timeout=30)
    figures(email_sent_after_kill_s=round((sent["sent_at"] - killed_at).total_seconds(), 2),
            first_claim_lease_left_at_kill_s=round((first_lease_ends - killed_at).total_seconds(), 2))
    assert sent["sent_at"] < first_lease_ends  # the redelivery sent it: no wait for the lease
    attempts = db.execute("SELECT id, consumer, outcome FROM creation_attempts WHERE request_id = %s ORDER BY id",
                          (request_id,)).fetchall()
    assert [a["outcome"] for a in attempts] == ["created", "already_done"]
    assert attempts[0]["id"] == claim["claimed_by"] and sent["claimed_by"] == attempts[1]["id"]  # taken over
    assert sent["attempts"] == 1
    assert len([m for m in stack.ses.sent_messages() if m["to"] == [address]]) == 1
    assert db.execute("SELECT count(*) AS n FROM users WHERE email = %s", (address,)).fetchone()["n"] == 1


async def test_redis_restarted_empty_after_202_still_ends_created_once(deps_factory, deps, consumers, stack, tmp_path,
                                                                       db):
    own = RedisServer(tmp_path / "redis")
    own.start()
    try:
        enqueuer = await deps_factory(REDIS_URL=own.url, NO_CONSUMER_FALLBACK=False)
        ids = await submit(enqueuer, [f"lost{i}@example.com" for i in range(5)])
        own.signal(signal.SIGKILL)
        own.stop()  # reaps the killed process
        own.start()  # same port, nothing kept
        fresh = redis.Redis.from_url(own.url)
        assert not fresh.keys("*")
        fresh.close()
        env = {**FAST_RECOVERY, "REDIS_URL": own.url}
        start_consumer(consumers, stack, tmp_path, env=env)
        assert set((await all_done(db, ids, timeout=20)).values()) == {"created"}
        assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 5
        event = db.execute("SELECT metadata FROM system_health_logs WHERE event = 'reconciled'").fetchone()
        assert event["metadata"]["requeued"] == 5
    finally:
        for process in consumers:
            process.stop()
        own.stop()


async def test_no_live_consumer_falls_back_and_a_new_consumer_restores_the_queue(deps_factory, deps, consumers,
                                                                                  stack, tmp_path, db):
    """The production default, with nothing pretending: no consumer has ever run on this queue."""
    instance = await deps_factory(CONSUMER_HEARTBEAT_TTL_S=2, CONSUMER_CHECK_TTL_S=0.2)
    assert instance.settings.no_consumer_fallback is True  # the default, not set by the test
    assert await instance.queue.live_consumers() == []
    answer = await create_user_request(instance, SALES, command_for("alone@example.com"), None)
    assert answer.status == 201 and answer.body["fallback"] is True
    warning = db.execute("SELECT level FROM system_health_logs WHERE event = 'no_consumer'").fetchall()
    assert [w["level"] for w in warning] == ["WARNING"]
    status = db.execute("SELECT fallback_reason FROM creation_requests WHERE email = 'alone@example.com'").fetchone()
    assert status["fallback_reason"] == "no_consumer"
    fast = {"CONSUMER_HEARTBEAT_TTL_S": "2", "CONSUMER_HEARTBEAT_S": "0.5"}
    first = start_consumer(consumers, stack, tmp_path, env=fast)
    await asyncio.sleep(0.3)
    answer = await create_user_request(instance, SALES, command_for("back@example.com"), None)
    assert answer.status == 202
    assert (await all_done(db, [answer.body["request_id"]], timeout=10)).popitem()[1] == "created"
    first.signal(signal.SIGKILL)  # gone without a word: only its heartbeat's expiry tells
    first.wait(5)
    await asyncio.sleep(2.5)
    answer = await create_user_request(instance, SALES, command_for("again-alone@example.com"), None)
    assert answer.status == 201 and answer.body["fallback"] is True
    start_consumer(consumers, stack, tmp_path, env=fast)
    await asyncio.sleep(0.3)
    answer = await create_user_request(instance, SALES, command_for("back-again@example.com"), None)
    assert answer.status == 202
    switches = [r["metadata"]["to"] for r in db.execute(
        "SELECT metadata FROM system_health_logs WHERE event = 'effective_mode_changed' ORDER BY id")]
    assert switches == ["sync_direct", "async_queue", "sync_direct", "async_queue"]
    ids = [r["id"] for r in db.execute("SELECT id FROM creation_requests")]
    assert set((await all_done(db, ids, timeout=10)).values()) == {"created"}
    assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 4


def command_for(email: str) -> CreateUserCommand:
    return CreateUserCommand(email=email, full_name="Live")


async def test_sigterm_during_a_job_finishes_it_and_exits_cleanly(deps, consumers, stack, tmp_path, db, trap):
    process = start_consumer(consumers, stack, tmp_path, env=FAST_RECOVERY)
    [request_id] = await submit(deps, ["slow-term@example.com"])
    await wait_until(lambda: db.execute("SELECT 1 FROM creation_attempts").fetchone(), timeout=10)
    process.signal(signal.SIGTERM)
    assert process.wait(20) == 0, process.output()
    assert statuses(db, [request_id])[request_id] == "created"
    stopped = db.execute("SELECT metadata FROM system_health_logs WHERE event = 'consumer_stopped'").fetchone()
    assert stopped["metadata"]["jobs_in_flight_at_stop"] == 1 and stopped["metadata"]["jobs_cut_off"] == 0
    live = await deps.queue.live_consumers()
    assert process.name not in {c["name"] for c in live}


async def test_second_sigterm_cuts_the_job_off_and_it_returns_to_the_queue(deps, consumers, stack, tmp_path, db, trap):
    process = start_consumer(consumers, stack, tmp_path, env=FAST_RECOVERY)
    [request_id] = await submit(deps, ["slow-twice@example.com"])
    await wait_until(lambda: db.execute("SELECT 1 FROM creation_attempts").fetchone(), timeout=10)
    process.signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    process.signal(signal.SIGTERM)
    process.wait(20)
    start_consumer(consumers, stack, tmp_path, env=FAST_RECOVERY)
    assert (await all_done(db, [request_id], timeout=30))[request_id] == "created"
    assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 1


async def test_metrics_list_the_live_consumer(deps, consumers, stack, tmp_path, call, tokens):
    from tests.conftest import auth

    process = start_consumer(consumers, stack, tmp_path, env={"CONSUMER_HEARTBEAT_S": "0.2"})
    [request_id] = await submit(deps, ["metrics@example.com"])
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        await wait_until(lambda: conn.execute("SELECT 1 FROM creation_requests WHERE id = %s AND status = 'created'",
                                              (request_id,)).fetchone(), timeout=10)
    await asyncio.sleep(0.6)
    m = (await call("system_metrics", "GET", "/api/admin/system/metrics", headers=auth(tokens["admin"]))).json()
    assert m["workers"]["alive"] == 1
    item = m["workers"]["items"][0]
    assert item["name"] == process.name and item["last_job_at"] is not None
    assert m["queue"]["completed"] == 1 and m["totals"]["created"] == 1
