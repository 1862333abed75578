"""Fault scenarios: each ends by checking PostgreSQL (requests, users) and the emails the SES emulator took."""

from __future__ import annotations

import asyncio
import collections
import signal
import time

import psycopg
import pytest

from infra.manifest import MIGRATIONS_DIR
from local.services import PostgresServer, RedisServer
from shared.auth import Principal, Role
from shared.creation import create_user_request
from shared.db import apply_migrations
from shared.errors import DatabaseUnavailable
from shared.mailer import Mailer
from shared.models import CreateUserCommand, SetModeCommand, TrafficMode
from shared.outbox import MAX_EMAIL_ATTEMPTS, deliver_pending
from shared.traffic import set_mode
from tests.conftest import make_settings, wait_until
from tests.integration.test_consumer import FAST_RECOVERY, all_done, start_consumer, statuses
from tests.support.pii import find_secrets
from tests.support.processes import ConsumerProcess

pytestmark = pytest.mark.slow
SALES = Principal("sales-1", Role.SALES_MANAGER)


def cmd(email: str) -> CreateUserCommand:
    return CreateUserCommand(email=email, full_name="Fault Test")


def duplicates(db) -> int:
    return db.execute("SELECT count(*) - count(DISTINCT email_normalized) AS d FROM users").fetchone()["d"]


def emails_per_user(stack, addresses: set[str]) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for message in stack.ses.sent_messages():
        for to in message["to"]:
            if to in addresses:
                counts[to] += 1
    return counts


@pytest.mark.parametrize("fault", ["refuse", "reset", "blackhole", "drop_replies"])
async def test_redis_fault_every_request_answered_within_1s_one_user_each(
        deps, deps_factory, proxy, consumers, stack, tmp_path, db, figures, fault):
    start_consumer(consumers, stack, tmp_path)  # talks to Redis directly: jobs that land are processed
    instance = await deps_factory(REDIS_URL=proxy.url, BREAKER_OPEN_S=1.0, BREAKER_PROBE_INTERVAL_S=0.1)
    assert (await create_user_request(instance, SALES, cmd(f"{fault}-before@example.com"), None)).status == 202
    proxy.set_mode(fault)
    slowest = 0.0
    emails = [f"{fault}-{i}@example.com" for i in range(20)]
    for email in emails:
        started = time.perf_counter()
        answer = await create_user_request(instance, SALES, cmd(email), None)
        slowest = max(slowest, time.perf_counter() - started)
        assert answer.status == 201 and answer.body["fallback"] is True
    assert slowest < 1.0
    assert db.execute("SELECT level FROM system_health_logs WHERE event = 'queue_fallback'").fetchone()
    proxy.set_mode("pass")
    await wait_until(lambda: not instance.breaker.is_open, timeout=10)
    after = await create_user_request(instance, SALES, cmd(f"{fault}-after@example.com"), None)
    assert after.status == 202
    ids = [r["id"] for r in db.execute("SELECT id FROM creation_requests")]
    assert set((await all_done(db, ids, timeout=20)).values()) == {"created"}
    await asyncio.sleep(1.5)  # let a job that landed despite the fault (drop_replies) reach the consumer
    assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == len(emails) + 2
    assert duplicates(db) == 0
    sent = emails_per_user(stack, set(emails))
    assert all(sent[e] == 1 for e in emails), sent
    figures(requests=len(emails), lost=0, duplicated=duplicates(db), max_answer_s=slowest)


async def test_flapping_redis_gives_bounded_switch_events(deps, deps_factory, proxy, db, figures):
    instance = await deps_factory(REDIS_URL=proxy.url, BREAKER_OPEN_S=2.0, BREAKER_PROBE_INTERVAL_S=0.1,
                                  NO_CONSUMER_FALLBACK=False)
    started = time.perf_counter()
    answered = 0
    flips = 0
    while time.perf_counter() - started < 6.0:
        wanted = "refuse" if int(time.perf_counter() - started) % 2 else "pass"
        if proxy.mode != wanted:
            proxy.set_mode(wanted)
            flips += 1
        answer = await create_user_request(instance, SALES, cmd(f"flap-{answered}@example.com"), None)
        assert answer.status in (201, 202)
        answered += 1
    switches = db.execute("SELECT count(*) AS n FROM system_health_logs WHERE event = 'effective_mode_changed'"
                          ).fetchone()["n"]
    # The breaker stays open at least 2 s: at most one open/close pair per 2 s, whatever the flips and requests.
    assert switches <= 2 * (6 // 2) + 1
    figures(requests=answered, proxy_flips=flips, switch_events=switches)


async def test_redis_killed_and_restarted_empty_with_200_accepted(deps_factory, deps, consumers, stack, tmp_path, db,
                                                                  figures):
    own = RedisServer(tmp_path / "redis")
    own.start()
    try:
        env = {**FAST_RECOVERY, "REDIS_URL": own.url, "RATE_LIMIT_MAX": "40"}
        start_consumer(consumers, stack, tmp_path, env=env)
        instance = await deps_factory(REDIS_URL=own.url, NO_CONSUMER_FALLBACK=False)
        ids = []
        for i in range(200):
            answer = await create_user_request(instance, SALES, cmd(f"restart-{i}@example.com"), None)
            assert answer.status == 202
            ids.append(answer.body["request_id"])
        created_before = sum(s == "created" for s in statuses(db, ids).values())
        own.signal(signal.SIGKILL)
        own.stop()
        own.start()
        final = await all_done(db, ids, timeout=60)
        assert set(final.values()) == {"created"}
        assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 200 and duplicates(db) == 0
        figures(requests=200, created_before_kill=created_before, lost=0, duplicated=0)
    finally:
        for process in consumers:
            process.stop()
        own.stop()


async def test_consumers_sigkilled_repeatedly_during_300_requests(deps, consumers, stack, tmp_path, db, figures):
    env = {**FAST_RECOVERY, "RATE_LIMIT_MAX": "60"}
    start_consumer(consumers, stack, tmp_path, env=env)
    start_consumer(consumers, stack, tmp_path, env=env)
    emails = [f"kill-{i}@example.com" for i in range(300)]
    ids = []
    for email in emails:
        answer = await create_user_request(deps, SALES, cmd(email), None)
        assert answer.status == 202
        ids.append(answer.body["request_id"])
    kills = 0
    deadline = time.monotonic() + 90
    while any(s != "created" for s in statuses(db, ids).values()):
        assert time.monotonic() < deadline, collections.Counter(statuses(db, ids).values())
        await asyncio.sleep(0.7)
        if kills < 6:
            victim = next(p for p in consumers if p.proc and p.proc.poll() is None)
            victim.signal(signal.SIGKILL)
            victim.wait(5)
            kills += 1
            start_consumer(consumers, stack, tmp_path, env=env)
    assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 300 and duplicates(db) == 0
    await asyncio.sleep(2 * float(FAST_RECOVERY["CONSUMER_LOCK_MS"]) / 1000)
    await deliver_pending(deps.pool, deps.mailer, deps.settings, source="test", limit=400)
    sent = emails_per_user(stack, set(emails))
    assert all(sent[e] >= 1 for e in emails)  # at-least-once: nobody without the link
    extra = sum(n - 1 for n in sent.values())
    assert extra <= kills  # a duplicate needs a crash between SES accepting and the commit
    figures(requests=300, sigkills=kills, lost=0, duplicated_users=0, duplicate_emails=extra)


async def test_postgres_terminated_and_restarted_503_then_recovers(deps_factory, deps, consumers, stack, tmp_path,
                                                                   figures):
    pg = PostgresServer(tmp_path / "pg", durable=False)
    pg.start()
    try:
        url = pg.create_database("faults")
        apply_migrations(url, MIGRATIONS_DIR)
        own_consumer = ConsumerProcess({**stack.env(), **FAST_RECOVERY, "DATABASE_URL": url}, tmp_path)
        consumers.append(own_consumer)
        own_consumer.start(url)
        instance = await deps_factory(DATABASE_URL=url, DB_TIMEOUT_S=0.5)

        async def post(i: int) -> tuple[int, float]:
            started = time.perf_counter()
            try:
                answer = await create_user_request(instance, SALES, cmd(f"pg-{i}@example.com"), None)
                return answer.status, time.perf_counter() - started
            except DatabaseUnavailable as err:
                assert err.headers["Retry-After"]
                return err.status, time.perf_counter() - started

        assert (await post(0))[0] == 202
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = 'faults' AND pid <> pg_backend_pid()")
        assert (await post(1))[0] == 202  # the pool replaced the killed connections by itself
        pg.stop()
        down = [await post(i) for i in range(2, 6)]
        assert {status for status, _ in down} == {503}
        slowest_down = max(t for _, t in down)
        assert slowest_down < 3.0
        pg.start()
        await wait_until(lambda: post(6), timeout=20)  # comes back without restarting anything
        assert (await post(7))[0] == 202
        with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
            ids = [r["id"] for r in conn.execute("SELECT id FROM creation_requests")]
            await all_done(conn, ids, timeout=30)
            stuck = conn.execute("SELECT count(*) AS n FROM creation_requests WHERE status <> 'created'").fetchone()
            assert stuck["n"] == 0
            assert conn.execute("SELECT count(*) - count(DISTINCT email_normalized) AS d FROM users"
                                ).fetchone()["d"] == 0
        figures(answers_while_down=len(down), max_503_s=slowest_down, stuck=0)
    finally:
        for process in consumers:
            process.stop()
        pg.stop()


@pytest.mark.parametrize("failure", ["unreachable", "rejecting"])
async def test_ses_failing_then_a_later_retry_sends_once(deps_factory, deps, stack, db, figures, failure):
    settings = make_settings(stack)
    if failure == "unreachable":
        broken = Mailer(make_settings(stack, AWS_ENDPOINT_URL_SES="http://127.0.0.1:9", EMAIL_SEND_TIMEOUT_S=1))
    else:
        broken = Mailer(make_settings(stack, EMAIL_SENDER="unverified@elsewhere.example"), client=stack.ses.client())
    instance = await deps_factory(mailer=broken)
    await set_mode(instance.pool, SetModeCommand(mode=TrafficMode.SYNC_DIRECT, reason="ses test"), actor="t",
                   source="t")
    answer = await create_user_request(instance, SALES, cmd(f"ses-{failure}@example.com"), None)
    assert answer.status == 201  # the user exists; the email waits in the outbox
    outbox = db.execute("SELECT status, attempts, last_error FROM email_outbox").fetchone()
    assert outbox["status"] == "pending" and outbox["attempts"] == 1 and outbox["last_error"]
    assert db.execute("SELECT level FROM system_health_logs WHERE event = 'email_retry'").fetchone() == {
        "level": "WARNING"}
    for _ in range(MAX_EMAIL_ATTEMPTS - 1):
        db.execute("UPDATE email_outbox SET next_attempt_at = now()")
        await deliver_pending(instance.pool, broken, settings, source="t")
    gave_up = db.execute("SELECT status, attempts FROM email_outbox").fetchone()
    assert gave_up == {"status": "failed", "attempts": MAX_EMAIL_ATTEMPTS}
    assert db.execute("SELECT level FROM system_health_logs WHERE event = 'email_failed'").fetchone() == {
        "level": "ERROR"}
    assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 1
    # An operator (or a fix) puts it back: one email, once.
    db.execute("UPDATE email_outbox SET status = 'pending', next_attempt_at = now()")
    before = len(stack.ses.sent_messages())
    await deliver_pending(deps.pool, deps.mailer, settings, source="t")
    await deliver_pending(deps.pool, deps.mailer, settings, source="t")
    assert len(stack.ses.sent_messages()) - before == 1
    figures(failure=failure, attempts_before_giving_up=MAX_EMAIL_ATTEMPTS, emails_after_recovery=1)


async def test_after_faults_no_redis_key_or_health_event_holds_an_address_or_secret(deps_factory, deps, proxy,
                                                                                       consumers, stack, tmp_path, db):
    """Faults in every mode, with real consumers, then a scan of every Redis key and every health event."""
    start_consumer(consumers, stack, tmp_path)
    instance = await deps_factory(REDIS_URL=proxy.url, BREAKER_OPEN_S=0.3, BREAKER_PROBE_INTERVAL_S=0.05)
    for i, fault in enumerate(["pass", "drop_replies", "refuse", "pass"]):
        proxy.set_mode(fault)
        await asyncio.sleep(0.5)
        for j in range(5):
            await create_user_request(instance, SALES, cmd(f"private.person{i}{j}@example.com"), None)
    ids = [r["id"] for r in db.execute("SELECT id FROM creation_requests")]
    await all_done(db, ids, timeout=20)
    assert find_secrets(stack.redis_url, stack.queue_prefix, stack.database_url, [b"private.person"]) == []
