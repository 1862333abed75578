"""What one created user costs the consumer in PostgreSQL: round trips counted on the wire, and no transaction
held open while SES is called. A real consumer process, real PostgreSQL, the SES emulator."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.creation.consumer import LIMITS_POLL_S
from tests.conftest import auth, wait_until
from tests.integration.test_consumer import all_done, start_consumer, submit
from tests.support.pgwire import CountingPgProxy
from tests.support.proxy import FaultProxy

pytestmark = pytest.mark.slow

# Only the limits poll (every 0.5 s) stays periodic: the other loops are pushed out of the measured window.
QUIET = {"OUTBOX_INTERVAL_S": "3600", "RECONCILE_INTERVAL_S": "60", "BULK_DRAIN_IDLE_S": "3600",
         "RATE_LIMIT_MAX": "0", "CONSUMER_CONCURRENCY": "5"}
MAX_ROUND_TRIPS_PER_USER = 4
MIN_ROUND_TRIPS_PER_USER = 3  # the attempt's start, provision_request(), the email's record: less is a lost step
ONE_AT_A_TIME = 8
LIMITS_POLL = "SELECT rate_limit_max, rate_limit_duration_ms, concurrency, version"  # the one periodic read


def job_trips(trips: list[str]) -> list[str]:
    """The round trips that are not the limits poll: in a window where only jobs run, the jobs' own."""
    return [t for t in trips if LIMITS_POLL not in t]


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.split("//", 1)[1].split("/")[0].split("@")[-1].rsplit(":", 1)
    return host, int(port)


def emails_sent(db, ids: list[str]) -> int:
    return int(db.execute("SELECT count(*) AS n FROM email_outbox WHERE request_id = ANY(%s) AND status = 'sent'",
                          (ids,)).fetchone()["n"])


async def post_requests(call, tokens, emails: list[str]) -> list[str]:
    """Through the HTTP function (its server span: the job carries the request's trace context)."""
    ids = []
    for email in emails:
        r = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]),
                       json={"email": email, "full_name": "Cost"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["request_id"])
    return ids


async def test_a_created_user_costs_at_most_4_postgresql_round_trips(consumers, stack, tmp_path, db, call, tokens,
                                                                     figures):
    """Counted on the wire between the consumer process and PostgreSQL ('Q' and Sync messages, each with the
    statement it ran), in the steady state (after a warm-up batch). The one periodic read (the limits poll) is
    told apart by its statement, so nothing is subtracted by estimate: idle, the consumer runs that poll and
    nothing else, at most once per LIMITS_POLL_S; busy, every other round trip is a job's. A batch of concurrent
    jobs gives the average; jobs sent one at a time give each job's own count (at least the 3 statements a
    created user needs, at most 4)."""
    pg = await CountingPgProxy(*_host_port(stack.database_url)).start()
    try:
        # In a thread: the start waits (blocking) for the consumer, whose connections go through this loop's proxy.
        await asyncio.to_thread(start_consumer, consumers, stack, tmp_path,
                                env={**QUIET, "DATABASE_URL": pg.dsn(stack.database_url)})
        await asyncio.sleep(1.0)  # start-up work done
        idle_from, idle_t0 = len(pg.trips), time.monotonic()
        await asyncio.sleep(3.0)
        idle, idle_s = pg.trips[idle_from:], time.monotonic() - idle_t0

        # A first batch warms the pool up (psycopg prepares a statement on its 5th use, once per connection).
        warm = await post_requests(call, tokens, [f"warm-{i}@example.com" for i in range(30)])
        assert set((await all_done(db, warm, timeout=60)).values()) == {"created"}
        await wait_until(lambda: emails_sent(db, warm) == len(warm), timeout=30)

        count = 40
        batch_from = len(pg.trips)
        ids = await post_requests(call, tokens, [f"cost-{i}@example.com" for i in range(count)])
        assert set((await all_done(db, ids, timeout=60)).values()) == {"created"}
        await wait_until(lambda: emails_sent(db, ids) == count, timeout=30)
        batch = job_trips(pg.trips[batch_from:])

        per_job: list[int] = []
        for i in range(ONE_AT_A_TIME):
            job_from = len(pg.trips)
            [one] = await post_requests(call, tokens, [f"cost-one-{i}@example.com"])
            assert (await all_done(db, [one], timeout=30)) == {one: "created"}
            await wait_until(lambda one=one: emails_sent(db, [one]) == 1, timeout=30)
            per_job.append(len(job_trips(pg.trips[job_from:])))
    finally:
        await pg.stop()
    per_user = len(batch) / count
    figures(pg_round_trips_per_user=round(per_user, 2), pg_round_trips_per_job_min=min(per_job),
            pg_round_trips_per_job_max=max(per_job), idle_round_trips_per_s=round(len(idle) / idle_s, 2))
    assert job_trips(idle) == [], collections.Counter(job_trips(idle))  # idle: the limits poll and nothing else
    assert 0 < len(idle) <= idle_s / LIMITS_POLL_S + 1, (len(idle), idle_s)
    most_common = collections.Counter(batch).most_common(12)
    assert MIN_ROUND_TRIPS_PER_USER <= per_user <= MAX_ROUND_TRIPS_PER_USER, (per_user, most_common)
    assert min(per_job) >= MIN_ROUND_TRIPS_PER_USER and max(per_job) <= MAX_ROUND_TRIPS_PER_USER, per_job


async def test_no_transaction_is_open_while_ses_is_called(deps, consumers, stack, tmp_path, db, figures):
    """SES answers slowly (a delaying proxy); meanwhile no connection of the consumer is 'idle in transaction'."""
    ses = await FaultProxy(*_host_port(stack.ses_url)).start()
    ses.set_mode("delay", 0.75)
    try:
        await asyncio.to_thread(start_consumer, consumers, stack, tmp_path,
                                env={"AWS_ENDPOINT_URL_SES": f"http://127.0.0.1:{ses.port}"})
        ids = await submit(deps, [f"slow-ses-{i}@example.com" for i in range(3)])
        seen: set[str] = set()
        samples = 0
        deadline = time.monotonic() + 30
        while emails_sent(db, ids) < len(ids):
            assert time.monotonic() < deadline, "the emails were not sent in time"
            rows = db.execute("SELECT state FROM pg_stat_activity WHERE datname = current_database()"
                              " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL").fetchall()
            seen.update(r["state"] for r in rows)
            samples += 1
            await asyncio.sleep(0.02)
    finally:
        await ses.stop()
    figures(activity_samples=samples)
    assert samples > 20  # the slow SES calls were watched, not missed
    assert "idle in transaction" not in seen
    # What went out is the welcome email: its subject, its text, a link whose token is the one stored (hashed),
    # and the row records SES' message id.
    for request_id in ids:
        row = db.execute("SELECT u.id, u.email, o.provider_id FROM users u JOIN email_outbox o ON o.user_id = u.id"
                         " WHERE u.request_id = %s", (request_id,)).fetchone()
        [message] = [m for m in stack.ses.sent_messages() if m["to"] == [row["email"]]]
        assert message["id"] == row["provider_id"] and message["subject"] == "Welcome: set your password"
        link = urlsplit(re.search(r"\S+/set-password#token=\S+", message["body"]).group(0))
        assert link.query == ""  # the token travels in the fragment only
        token = parse_qs(link.fragment)["token"][0]
        stored = db.execute("SELECT used_at FROM password_setup_tokens WHERE token_hash = %s AND user_id = %s",
                            (hashlib.sha256(token.encode()).hexdigest(), row["id"])).fetchone()
        assert stored == {"used_at": None}
        assert message["body"].startswith("Hello Q,\n\nAn account was created for you.")
