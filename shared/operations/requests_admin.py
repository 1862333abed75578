"""A retry of one failed creation request through the normal path (the listing is `request_search`)."""

from __future__ import annotations

from typing import Any

from psycopg import errors as pg_errors

from shared.bootstrap import Deps
from shared.core import db
from shared.core.audit import record_audit
from shared.core.auth import Principal
from shared.core.errors import NotFound, RequestInProgress
from shared.core.health import Level, record
from shared.creation.models import TrafficMode, is_request_id
from shared.creation.provisioning import provision


async def retry_request(deps: Deps, principal: Principal, request_id: str, reason: str) -> dict[str, Any]:
    """Put a failed request back on the normal path: the queue when it may be used, else created now."""
    if not is_request_id(request_id):
        raise NotFound("no such creation request")
    try:
        async with db.connection(deps.pool) as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE creation_requests r SET status = 'queued', error_code = NULL, error = NULL, updated_at = now()"
                " FROM (SELECT id, error_code FROM creation_requests WHERE id = %s FOR UPDATE) AS before"
                " WHERE r.id = before.id AND r.status = 'failed' AND r.pii_redacted_at IS NULL"
                " RETURNING before.error_code", (request_id,))
            retried = await cur.fetchone()
            if retried is None:
                cur = await conn.execute("SELECT status, pii_redacted_at FROM creation_requests WHERE id = %s",
                                         (request_id,))
                row = await cur.fetchone()
                if row is None:
                    raise NotFound("no such creation request")
                if row["pii_redacted_at"] is not None:  # docs/personal-data.md: its address is gone
                    raise RequestInProgress("this request's personal data was removed: it cannot run again")
                raise RequestInProgress(f"only failed requests can be retried (this one is {row['status']})")
            await conn.execute("INSERT INTO creation_retries (request_id, actor, reason) VALUES (%s, %s, %s)",
                               (request_id, principal.subject, reason))
            await record_audit(conn, actor=principal.subject, action="request_retry", reason=reason,
                               before={"status": "failed", "error_code": retried["error_code"]},
                               after={"status": "queued"}, target=request_id)
            await record(conn, Level.INFO, "request_retried", f"failed request retried by {principal.subject}",
                         {"request_id": request_id, "by": principal.subject, "reason": reason}, source=deps.source)
    except pg_errors.UniqueViolation:
        raise RequestInProgress("another request for this address is in progress") from None

    mode = (await deps.mode_cache.current()).mode
    fallback_reason = await deps.fallback_reason() if mode is TrafficMode.ASYNC_QUEUE else None
    if mode is TrafficMode.ASYNC_QUEUE and fallback_reason is None:
        try:
            await deps.queue.remove_job(request_id)  # the failed job keeps the id; a new one needs it
            await deps.queue.enqueue(request_id)
            await _set_mode(deps, request_id, TrafficMode.ASYNC_QUEUE)
            return {"request_id": request_id, "status": "queued", "mode": TrafficMode.ASYNC_QUEUE.value}
        except Exception as exc:
            await deps.breaker.failure(f"redis_unavailable: {type(exc).__name__}")
    await _set_mode(deps, request_id, TrafficMode.SYNC_DIRECT)
    outcome = await provision(deps.pool, request_id, source=deps.source, via="retry")
    return {"request_id": request_id, "status": outcome.status, "mode": TrafficMode.SYNC_DIRECT.value,
            "error": outcome.error}


async def _set_mode(deps: Deps, request_id: str, mode: TrafficMode) -> None:
    async with db.connection(deps.pool) as conn:
        await conn.execute("UPDATE creation_requests SET mode = %s, updated_at = now() WHERE id = %s",
                           (mode.value, request_id))
