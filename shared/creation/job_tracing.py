"""The consumer's job span: a child of the creation request's span, and linked to it. Its context comes with
the job (`traceparent` in the job data, set by the request that enqueued it); a job without it (re-enqueued
by the reconciler, a bulk chunk, an older job) reads `creation_requests.traceparent` (written when the request
was recorded): one round trip more."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from psycopg_pool import AsyncConnectionPool

from shared.core import db, tracing
from shared.core.errors import DatabaseUnavailable

log = logging.getLogger(__name__)


async def request_traceparent(pool: AsyncConnectionPool, request_id: str) -> str | None:
    """The W3C traceparent recorded with the request (None when absent or unreadable)."""
    try:
        async with db.connection(pool) as conn:
            cur = await conn.execute("SELECT traceparent FROM creation_requests WHERE id = %s", (request_id,))
            row = await cur.fetchone()
    except DatabaseUnavailable:
        return None  # the job itself will meet the outage and say so; its span starts a trace of its own
    return row["traceparent"] if row and row["traceparent"] else None


@contextlib.asynccontextmanager
async def job_span(pool: AsyncConnectionPool, job: Any) -> AsyncIterator[None]:
    """Run a job inside its span (nothing when tracing is not set up in this process)."""
    if tracing.extract({}) is None:  # tracing not set up in this process
        yield
        return
    data = job.data if isinstance(job.data, dict) else {}
    request_id = data.get("request_id") if isinstance(data.get("request_id"), str) else None
    carried = data.get("traceparent")
    if isinstance(carried, str):  # "" when the request had none
        traceparent: str | None = carried or None
    else:  # a job enqueued without it (reconciler, bulk, older jobs): the request row has it
        traceparent = await request_traceparent(pool, request_id) if request_id else None
    parent = tracing.extract({"traceparent": traceparent} if traceparent else {})
    with tracing.span("consumer.job", parent=parent, kind="CONSUMER", link_parent=True,
                      attributes={"request_id": request_id or "", "attempt": int(job.attemptsMade) + 1}):
        yield
