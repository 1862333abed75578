"""A job that fails with PII in its underlying error text leaves none of it in Redis or the health log."""

from __future__ import annotations

import json

import psycopg
import pytest
import redis

from shared.core.auth import Principal, Role
from shared.creation.creation import create_user_request
from shared.creation.models import CreateUserCommand
from tests.integration.test_consumer import all_done, start_consumer
from tests.support.pii import find_secrets

pytestmark = pytest.mark.slow
SALES = Principal("sales-1", Role.SALES_MANAGER)
ADDRESS = "pii-zoe.quillfeather@example.com"
NAME = "Zoë Quillfeather-Marchbanks"
PHONE = "+44 20 7946 0958"


@pytest.fixture
def row_refused(db):
    """A real PostgreSQL refusal whose DETAIL holds the whole row: 'Failing row contains (..., address, ...)'."""
    db.execute("ALTER TABLE users ADD CONSTRAINT test_refuse_pii CHECK (email NOT LIKE 'pii-%') NOT VALID")
    yield
    db.execute("ALTER TABLE users DROP CONSTRAINT IF EXISTS test_refuse_pii")


def underlying_error_text(db) -> str:
    """What the consumer's insert runs into, read straight from PostgreSQL (so the test cannot pass vacuously)."""
    try:
        with db.transaction():
            db.execute("INSERT INTO users (id, email, email_normalized, full_name, phone, request_id)"
                       " VALUES (gen_random_uuid(), %s, %s, %s, %s, 'probe')", (ADDRESS, ADDRESS, NAME, PHONE))
    except psycopg.errors.CheckViolation as err:
        return f"{err}\n{err.diag.message_detail}"
    raise AssertionError("the constraint did not refuse the row")


async def test_a_failed_job_leaves_no_address_name_or_phone_in_redis_or_health_events(
        deps, deps_factory, consumers, stack, tmp_path, db, row_refused):
    text = underlying_error_text(db)
    assert ADDRESS in text and NAME in text and PHONE in text  # the raw error would leak all three
    start_consumer(consumers, stack, tmp_path)
    enqueuer = await deps_factory(JOB_ATTEMPTS=2, JOB_BACKOFF_MS=200)
    answer = await create_user_request(enqueuer, SALES,
                                       CreateUserCommand(email=ADDRESS, full_name=NAME, phone=PHONE), None)
    assert answer.status == 202, answer.body
    request_id = answer.body["request_id"]
    assert (await all_done(db, [request_id], timeout=30))[request_id] == "failed"

    # The failure did reach Redis (so the scan below looks at real failure records, not an empty queue).
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        job = client.hgetall(f"{stack.queue_prefix}:user-creation:{request_id}")
        events = client.xrange(f"{stack.queue_prefix}:user-creation:events")
    finally:
        client.close()
    assert job["failedReason"] and json.loads(job["stacktrace"])
    assert any(e.get("event") == "failed" and e.get("jobId") == request_id for _, e in events)
    assert db.execute("SELECT level FROM system_health_logs WHERE event = 'creation_failed'").fetchone() == {
        "level": "ERROR"}

    assert find_secrets(stack.redis_url, stack.queue_prefix, stack.database_url, [],
                        exact=[ADDRESS, NAME, PHONE, "Quillfeather", "7946"]) == []
    assert job["failedReason"] == "creation attempt failed (CheckViolation)"
    assert "JobAttemptFailed" in json.loads(job["stacktrace"])[-1]
