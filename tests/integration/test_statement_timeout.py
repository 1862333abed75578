"""No query runs unbounded (issue 21): the pool sets statement_timeout on each connection it opens, and the runtime
role carries its own default in the database (migration 0020) for connections made outside the pool."""

from __future__ import annotations

import time

import psycopg
import pytest

from shared.core import db
from shared.core.errors import DatabaseUnavailable
from tests.integration.test_runtime_role import RUNTIME, as_role
from tests.support.stack import Stack


async def test_a_statement_past_the_pools_timeout_is_cancelled_and_answered_503(deps_factory) -> None:
    deps = await deps_factory(DB_STATEMENT_TIMEOUT_MS="300")
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        async with db.connection(deps.pool) as conn:
            await conn.execute("SELECT pg_sleep(5)")
    assert time.monotonic() - started < 3  # cancelled by the server at 0.3 s, not after the 5 s sleep
    async with db.connection(deps.pool) as conn:
        shown = await (await conn.execute("SHOW statement_timeout")).fetchone()
    assert shown is not None and shown["statement_timeout"] == "300ms"


def test_the_runtime_role_has_its_own_statement_timeout_in_the_database(stack: Stack) -> None:
    with psycopg.connect(as_role(stack.database_url, RUNTIME), autocommit=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("1min",)
    with psycopg.connect(stack.database_url, autocommit=True) as conn:  # the owner (migrations): no limit
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)
