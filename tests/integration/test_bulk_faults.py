"""Bulk uploads under faults, with real parts: a Redis process killed halfway through queueing a batch, a
consumer process SIGKILLed mid-batch. Every accepted row must end as exactly one user."""

from __future__ import annotations

import asyncio
import collections
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from local.redis_server import RedisServer
from shared.bulk.upload import accept_upload
from shared.core.auth import Principal, Role
from tests.conftest import wait_until
from tests.integration.test_consumer import FAST_RECOVERY, start_consumer

pytestmark = pytest.mark.slow
SALES = Principal("sales-bulk", Role.SALES_MANAGER)


def csv_rows(prefix: str, count: int) -> bytes:
    lines = ["email,full_name"] + [f"{prefix}{i}@example.com,Bulk {i}" for i in range(count)]
    return ("\n".join(lines) + "\n").encode()


def batch_outcome(db, batch_id: str) -> dict[str, int]:
    rows = db.execute("SELECT status, count(*) AS n FROM creation_requests WHERE batch_id = %s GROUP BY status",
                      (batch_id,)).fetchall()
    return {r["status"]: r["n"] for r in rows}


async def assert_one_user_per_row(db, stack, batch_id: str, accepted: int, emails_before: int) -> None:
    requests = db.execute("SELECT r.id, r.email, r.status, r.user_id, (SELECT count(*) FROM users u"
                          " WHERE u.request_id = r.id) AS users FROM creation_requests r WHERE r.batch_id = %s",
                          (batch_id,)).fetchall()
    assert len(requests) == accepted
    assert {r["status"] for r in requests} == {"created"}
    assert all(r["users"] == 1 and r["user_id"] is not None for r in requests)
    addresses = {r["email"] for r in requests}
    made = db.execute("SELECT email FROM users WHERE email = ANY(%s)", (list(addresses),)).fetchall()
    assert len(made) == accepted

    def emailed() -> set[str]:
        return set(collections.Counter(m["to"][0] for m in stack.ses.sent_messages()[emails_before:]))

    # every new user gets the welcome email (at least once); a user whose consumer died between its commit and
    # the send gets it from the outbox pass of the consumer still alive
    await wait_until(lambda: emailed() >= addresses, timeout=30, interval=0.5)


async def test_redis_killed_halfway_through_queueing_every_row_ends_as_one_user(deps_factory, deps, consumers,
                                                                                stack, tmp_path: Path, db):
    own = RedisServer(tmp_path / "redis")
    own.start()
    watcher = aioredis.Redis.from_url(own.url)
    try:
        uploader = await deps_factory(REDIS_URL=own.url, NO_CONSUMER_FALLBACK=False, BULK_ENQUEUE_CHUNK=10)
        emails_before = len(stack.ses.sent_messages())
        upload = asyncio.create_task(accept_upload(uploader, SALES, csv_rows("halfway", 800), "text/csv", None))
        # Kill the Redis process (SIGKILL) once a second chunk is in it: chunks go one round trip at a time, so the
        # first chunk's reply has then reached the uploader (recorded as enqueued), and the rest cannot land.
        async def second_chunk_landed() -> bool:
            return int(await watcher.llen(f"{stack.queue_prefix}:user-creation:wait")) > 10

        await wait_until(second_chunk_landed, timeout=30, interval=0.001)
        own.signal(signal.SIGKILL)
        answer = await upload
        assert answer.status == 202, answer.body
        assert answer.body["accepted"] == 800 and answer.body["path"] == "drain"
        batch_id = answer.body["batch_id"]
        batch = db.execute("SELECT enqueued, path FROM bulk_batches WHERE id = %s", (batch_id,)).fetchone()
        assert 0 < batch["enqueued"] < 800, batch  # really halfway: some chunks landed, some never did
        to_drain = db.execute("SELECT count(*) AS n FROM creation_requests WHERE batch_id = %s"
                              " AND mode = 'sync_direct' AND fallback", (batch_id,)).fetchone()["n"]
        assert to_drain == 800 - batch["enqueued"]
        fallback = db.execute("SELECT level FROM system_health_logs WHERE event = 'bulk_fallback'").fetchone()
        assert fallback == {"level": "WARNING"}

        own.stop()
        own.start()  # same port, empty: the chunks that landed are lost too
        env = {**FAST_RECOVERY, "REDIS_URL": own.url, "RATE_LIMIT_MAX": "200"}
        start_consumer(consumers, stack, tmp_path, env=env)  # its reconciler re-queues, its drain creates
        await wait_until(lambda: batch_outcome(db, batch_id) == {"created": 800}, timeout=90, interval=0.5)
        await assert_one_user_per_row(db, stack, batch_id, 800, emails_before)
        # the consumer's drain loop records the end of the batch, once
        await wait_until(lambda: db.execute("SELECT finished_at FROM bulk_batches WHERE id = %s",
                                            (batch_id,)).fetchone()["finished_at"], timeout=10)
        assert db.execute("SELECT count(*) AS n FROM system_health_logs WHERE event = 'bulk_finished'").fetchone() \
            == {"n": 1}
    finally:
        await watcher.aclose()
        own.stop()


async def test_consumer_sigkilled_mid_batch_every_row_ends_as_one_user(deps, consumers, stack, tmp_path: Path,
                                                                       db):
    env = {**FAST_RECOVERY, "RATE_LIMIT_MAX": "40", "OUTBOX_INTERVAL_S": "1"}
    first = start_consumer(consumers, stack, tmp_path, env=env)
    emails_before = len(stack.ses.sent_messages())
    answer = await accept_upload(deps, SALES, csv_rows("killed", 200), "text/csv", None)
    assert answer.status == 202 and answer.body["path"] == "queue" and answer.body["accepted"] == 200
    batch_id = answer.body["batch_id"]
    await wait_until(lambda: batch_outcome(db, batch_id).get("created", 0) >= 30, timeout=30, interval=0.05)
    first.signal(signal.SIGKILL)
    first.wait(10)
    assert batch_outcome(db, batch_id).get("created", 0) < 200  # killed with work left
    start_consumer(consumers, stack, tmp_path, env=env)
    await wait_until(lambda: batch_outcome(db, batch_id) == {"created": 200}, timeout=90, interval=0.5)
    await assert_one_user_per_row(db, stack, batch_id, 200, emails_before)
