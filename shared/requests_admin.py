"""Admin view of creation requests: the failed ones, and a retry through the normal path."""

from __future__ import annotations

from typing import Any

from psycopg import errors as pg_errors

from shared import db
from shared.auth import Principal
from shared.bootstrap import Deps
from shared.errors import InvalidInput, NotFound, RequestInProgress
from shared.health import Level, record
from shared.models import TrafficMode, is_request_id
from shared.provisioning import provision

STATUSES = ("queued", "processing", "created", "failed")


async def list_requests(deps: Deps, status: str, limit: int) -> list[dict[str, Any]]:
    """Requests in one status, most recently updated first (admins see the address to recognise them)."""
    if status not in STATUSES:
        raise InvalidInput("unknown status", details=[{"field": "status", "message": f"one of {', '.join(STATUSES)}"}])
    if not 1 <= limit <= 500:
        raise InvalidInput("limit must be 1-500", details=[{"field": "limit", "message": "1-500"}])
    async with db.connection(deps.pool) as conn:
        cur = await conn.execute(
            "SELECT id, status, mode, fallback, attempts, error_code, error, email, full_name, created_at, updated_at"
            " FROM creation_requests WHERE status = %s ORDER BY updated_at DESC LIMIT %s", (status, limit))
        rows = await cur.fetchall()
    return [{"request_id": r["id"], "status": r["status"], "mode": r["mode"], "fallback": r["fallback"],
             "attempts": r["attempts"], "error_code": r["error_code"], "error": r["error"], "email": r["email"],
             "full_name": r["full_name"], "created_at": r["created_at"].isoformat(),
             "updated_at": r["updated_at"].isoformat()} for r in rows]


async def retry_request(deps: Deps, principal: Principal, request_id: str, reason: str) -> dict[str, Any]:
    """Put a failed request back on the normal path: the queue when it may be used, else created now."""
    if not is_request_id(request_id):
        raise NotFound("no such creation request")
    try:
        async with db.connection(deps.pool) as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE creation_requests SET status = 'queued', error_code = NULL, error = NULL, updated_at = now()"
                " WHERE id = %s AND status = 'failed' RETURNING id", (request_id,))
            if await cur.fetchone() is None:
                cur = await conn.execute("SELECT status FROM creation_requests WHERE id = %s", (request_id,))
                row = await cur.fetchone()
                if row is None:
                    raise NotFound("no such creation request")
                raise RequestInProgress(f"only failed requests can be retried (this one is {row['status']})")
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
