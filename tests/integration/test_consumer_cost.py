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

from tests.conftest import auth, wait_until
from tests.integration.test_consumer import all_done, start_consumer, submit
from tests.support.pgwire import CountingPgProxy
from tests.support.proxy import FaultProxy

pytestmark = pytest.mark.slow

# Only the limits poll (every 0.5 s) stays periodic: the other loops are pushed out of the measured window.
QUIET = {"OUTBOX_INTERVAL_S": "3600", "RECONCILE_INTERVAL_S": "60", "BULK_DRAIN_IDLE_S": "3600",
         "RATE_LIMIT_MAX": "0", "CONSUMER_CONCURRENCY": "5"}
MAX_ROUND_TRIPS_PER_USER = 4


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
    """Counted on the wire between the consumer process and PostgreSQL ('Q' and Sync messages), in the steady
    state (after a warm-up batch). The periodic background (the limits poll, 2 a second) is measured in an idle
    window first and subtracted pro rata; the other loops are set to run outside the window."""
    pg = await CountingPgProxy(*_host_port(stack.database_url)).start()
    try:
        # In a thread: the start waits (blocking) for the consumer, whose connections go through this loop's proxy.
        await asyncio.to_thread(start_consumer, consumers, stack, tmp_path,
                                env={**QUIET, "DATABASE_URL": pg.dsn(stack.database_url)})
        await asyncio.sleep(1.0)  # start-up work done
        idle_from, idle_t0 = pg.round_trips, time.monotonic()
        await asyncio.sleep(3.0)
        idle_rate = (pg.round_trips - idle_from) / (time.monotonic() - idle_t0)

        # A first batch warms the pool up (psycopg prepares a statement on its 5th use, once per connection).
        warm = await post_requests(call, tokens, [f"warm-{i}@example.com" for i in range(30)])
        assert set((await all_done(db, warm, timeout=60)).values()) == {"created"}
        await wait_until(lambda: emails_sent(db, warm) == len(warm), timeout=30)

        count = 40
        before, t0, first_statement = pg.round_trips, time.monotonic(), len(pg.statements)
        ids = await post_requests(call, tokens, [f"cost-{i}@example.com" for i in range(count)])
        assert set((await all_done(db, ids, timeout=60)).values()) == {"created"}
        await wait_until(lambda: emails_sent(db, ids) == count, timeout=30)
        elapsed = time.monotonic() - t0
        used = pg.round_trips - before - idle_rate * elapsed
        statements = collections.Counter(pg.statements[first_statement:])
    finally:
        await pg.stop()
    per_user = used / count
    figures(pg_round_trips_per_user=round(per_user, 2), idle_round_trips_per_s=round(idle_rate, 2),
            window_s=round(elapsed, 2))
    assert per_user <= MAX_ROUND_TRIPS_PER_USER, (per_user, idle_rate, elapsed, statements.most_common(12))


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
