"""Hypothesis: whatever sequence of keyed and unkeyed submissions a caller sends, the idempotency rules hold."""

from __future__ import annotations

import asyncio

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.bootstrap import open_deps
from shared.core.auth import Principal, Role
from shared.core.errors import DomainError
from shared.creation.creation import create_user_request
from shared.creation.mailer import Mailer
from shared.creation.models import CreateUserCommand
from tests.conftest import _wipe, make_settings

CALLER = Principal("prop-caller", Role.SALES_MANAGER)
submission = st.tuples(st.sampled_from([None, "k1", "k2", "k3"]), st.integers(0, 3), st.integers(0, 1))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(submission, min_size=1, max_size=8), st.sampled_from(["async_queue", "sync_direct"]))
def test_idempotency_rules_hold_for_any_sequence(stack, submissions, mode):
    _wipe(stack)
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute("UPDATE system_config SET value = %s WHERE key = 'traffic_mode'", (mode,))
    answers = asyncio.run(_submit(stack, submissions))

    first_by_key: dict[str, tuple[int, dict]] = {}
    for (key, person, variant), (status, body) in zip(submissions, answers, strict=True):
        if key is None:
            continue
        if key not in first_by_key:
            if status in (201, 202):  # a key is bound by the first request that was recorded; a 409 records nothing
                first_by_key[key] = ((person, variant), (status, body))
            continue
        first_input, (first_status, first_body) = first_by_key[key]
        if (person, variant) == first_input:
            assert (status, body) == (first_status, first_body)  # the first answer again
        else:
            assert status == 422 and body["code"] == "idempotency_key_reused"

    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT idempotency_key, count(*) FROM creation_requests GROUP BY 1").fetchall()
        users = conn.execute("SELECT count(*), count(DISTINCT email_normalized) FROM users").fetchone()
    per_key = {key: n for key, n in rows if key is not None}
    assert all(n == 1 for n in per_key.values())  # one request per key, whatever the replays
    assert users[0] == users[1]  # never two users for one address


async def _submit(stack, submissions) -> list[tuple[int, dict]]:
    settings_ = make_settings(stack, NO_CONSUMER_FALLBACK=False)  # the queue path, with no consumer running
    deps = await open_deps(settings_, mailer=Mailer(settings_, client=stack.ses.client()))
    answers = []
    try:
        for key, person, variant in submissions:
            command = CreateUserCommand(email=f"person{person}@example.com", full_name=f"Name {variant}")
            try:
                answer = await create_user_request(deps, CALLER, command, key)
                answers.append((answer.status, answer.body))
            except DomainError as err:
                answers.append((err.status, {"code": err.code}))
    finally:
        await deps.aclose()
    return answers
