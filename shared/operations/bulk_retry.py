"""Retry many failed creation requests at once: by ids or by the search filter, dry run first.

Guarantees: only `failed` requests are retried; at most one per address, and none whose address already has a
user or another unfinished request (so no second user and no second welcome email: `provision()` decides, as
for every path); each goes through the normal path: enqueued, so the consumers' global rate limit paces it,
or, with the queue off, created here one by one at the stored rate limit. Whatever this call does not finish
stays `queued` in PostgreSQL and the reconciler completes it: nothing is lost.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from psycopg import errors as pg_errors
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from shared.bootstrap import Deps
from shared.core import db
from shared.core.audit import record_audit
from shared.core.auth import Principal
from shared.core.errors import InvalidInput, RequestInProgress
from shared.core.health import Level, record, record_detached
from shared.creation.limits import read_limits
from shared.creation.models import PlainText, TrafficMode
from shared.creation.provisioning import provision
from shared.creation.queueing import JOB_NAME, job_options
from shared.operations.request_search import parse_filter, where_clause

MAX_MATCHED = 10_000
SYNC_BUDGET_S = 25.0  # the sync path stops creating here and leaves the rest to the reconciler
ENQUEUE_CHUNK = 500


class BulkRetryCommand(BaseModel):
    """Which requests (ids or a filter, not both), why, and whether only to count."""

    model_config = ConfigDict(extra="forbid")

    request_ids: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,100}$")]] | None = None
    filter: dict[str, Any] | None = None
    reason: Annotated[PlainText, Field(min_length=3, max_length=500)]
    dry_run: StrictBool = False

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("request_ids", "filter"):
                if key in data and data[key] is None:
                    raise ValueError(f"{key} must not be null (leave it out)")
        return data

    @model_validator(mode="after")
    def _one_selector(self) -> BulkRetryCommand:
        if (self.request_ids is None) == (self.filter is None):
            raise ValueError("give either request_ids or filter")
        return self


def _too_many(matched: str) -> InvalidInput:
    return InvalidInput(f"{matched} requests match: at most {MAX_MATCHED:,} can be retried at once; narrow the "
                        "filter (status, time range, search) or give request_ids",
                        details=[{"field": "filter", "message": f"matches more than {MAX_MATCHED}"}])


async def _selection(conn: Any, command: BulkRetryCommand) -> tuple[sql.Composable, dict[str, Any]]:
    if command.request_ids is not None:
        if len(command.request_ids) > MAX_MATCHED:
            raise _too_many(f"{len(command.request_ids):,}")
        return sql.SQL("id = ANY(%(ids)s)"), {"ids": list(dict.fromkeys(command.request_ids))}
    flt = command.filter or {}
    unknown = sorted(set(flt) - {"q", "status", "actor", "from", "to"})
    if unknown:
        raise InvalidInput("unknown filter field", details=[{"field": f"filter.{f}", "message": "unknown"}
                                                            for f in unknown])
    return await where_clause(conn, parse_filter(flt, prefix="filter."))


_CANDIDATES = """
    matched AS (SELECT id, status, email_normalized, created_at, pii_redacted_at FROM creation_requests
                WHERE {where}),
    candidates AS (
        SELECT DISTINCT ON (m.email_normalized) m.id FROM matched m
        WHERE m.status = 'failed' AND m.pii_redacted_at IS NULL
          AND NOT EXISTS (SELECT 1 FROM users u WHERE u.email_normalized = m.email_normalized)
          AND NOT EXISTS (SELECT 1 FROM creation_requests p WHERE p.email_normalized = m.email_normalized
                          AND p.status IN ('queued', 'processing'))
        ORDER BY m.email_normalized, m.created_at DESC)
"""


async def _count_matched(conn: Any, where: sql.Composable, params: dict[str, Any]) -> int:
    cur = await conn.execute(sql.SQL("SELECT count(*) AS n FROM (SELECT 1 FROM creation_requests WHERE {}"
                                     " LIMIT %(cap)s) AS m").format(where), {**params, "cap": MAX_MATCHED + 1},
                             prepare=False)
    row = await cur.fetchone()
    matched = int(row["n"]) if row else 0
    if matched > MAX_MATCHED:
        raise _too_many(f"more than {MAX_MATCHED:,}")
    return matched


async def dry_run(deps: Deps, command: BulkRetryCommand) -> dict[str, int]:
    """How many match, would be retried, already have a user, already got their welcome email."""
    async with db.connection(deps.pool) as conn:
        where, params = await _selection(conn, command)
        await _count_matched(conn, where, params)
        cur = await conn.execute(sql.SQL("""WITH {candidates}
            SELECT (SELECT count(*) FROM matched) AS matched,
                   (SELECT count(*) FROM candidates) AS would_retry,
                   (SELECT count(*) FROM matched m WHERE EXISTS (
                        SELECT 1 FROM users u WHERE u.email_normalized = m.email_normalized)) AS already_created,
                   (SELECT count(*) FROM matched m WHERE EXISTS (
                        SELECT 1 FROM users u JOIN email_outbox o ON o.user_id = u.id AND o.status = 'sent'
                        WHERE u.email_normalized = m.email_normalized)) AS emails_already_sent
            """).format(candidates=sql.SQL(_CANDIDATES).format(where=where)), params, prepare=False)
        row = await cur.fetchone() or {}
    return {key: int(row.get(key) or 0) for key in ("matched", "would_retry", "already_created",
                                                   "emails_already_sent")}


async def bulk_retry(deps: Deps, principal: Principal, command: BulkRetryCommand) -> tuple[int, dict[str, Any]]:
    """(HTTP status, answer): 200 `{retried: 0, skipped}` when nothing is retried, else 202 `{retried, skipped}`.
    The requests, their retry rows, one audit row and one WARNING event are written in one transaction."""
    try:
        async with db.connection(deps.pool) as conn, conn.transaction():
            where, params = await _selection(conn, command)
            matched = await _count_matched(conn, where, params)
            cur = await conn.execute(sql.SQL("""WITH {candidates},
                retried AS (
                    UPDATE creation_requests r SET status = 'queued', error_code = NULL, error = NULL,
                           updated_at = now()
                    FROM candidates c WHERE r.id = c.id AND r.status = 'failed' RETURNING r.id)
                SELECT id FROM retried""").format(candidates=sql.SQL(_CANDIDATES).format(where=where)),
                                     params, prepare=False)
            ids = [r["id"] for r in await cur.fetchall()]
            if not ids:
                return 200, {"retried": 0, "skipped": matched}
            await conn.execute("INSERT INTO creation_retries (request_id, actor, reason, bulk)"
                               " SELECT unnest(%s::text[]), %s, %s, true", (ids, principal.subject, command.reason))
            selector: dict[str, Any] = ({"request_ids": len(command.request_ids)} if command.request_ids is not None
                                        else {"filter": command.filter})
            audit_id = await record_audit(conn, actor=principal.subject, action="bulk_retry", reason=command.reason,
                                          before={**selector, "matched": matched},
                                          after={"retried": len(ids), "skipped": matched - len(ids),
                                                 "sample": ids[:20]})
            await record(conn, Level.WARNING, "bulk_retry_started",
                         f"{len(ids)} failed request(s) retried by {principal.subject} ({matched - len(ids)} skipped)",
                         {"by": principal.subject, "reason": command.reason, "matched": matched,
                          "retried": len(ids), "skipped": matched - len(ids), "audit_id": audit_id},
                         source=deps.source)
    except pg_errors.UniqueViolation:
        raise RequestInProgress("another request for one of these addresses started meanwhile; try again") from None
    progress = await _dispatch(deps, ids)
    return 202, {"retried": len(ids), "skipped": matched - len(ids), "audit_id": audit_id, **progress}


async def _dispatch(deps: Deps, ids: list[str]) -> dict[str, Any]:
    """Send the retried requests down the normal path: the queue when it may be used, else paced sync creation."""
    mode = (await deps.mode_cache.current()).mode
    reason = await deps.fallback_reason() if mode is TrafficMode.ASYNC_QUEUE else "manual"
    if reason is None:
        try:
            await _set_mode(deps, ids, TrafficMode.ASYNC_QUEUE)
            for start in range(0, len(ids), ENQUEUE_CHUNK):
                chunk = ids[start:start + ENQUEUE_CHUNK]
                for request_id in chunk:  # a failed job keeps its id; the new one needs it
                    await deps.queue.remove_job(request_id)
                await asyncio.wait_for(deps.queue.queue.addBulk(
                    [{"name": JOB_NAME, "data": {"request_id": i}, "opts": job_options(deps.settings, i)}
                     for i in chunk]), 10)
            return {"path": "queue"}
        except Exception as exc:
            await deps.breaker.failure(f"redis_unavailable: {type(exc).__name__}")
            reason = "redis_unavailable"
    await _set_mode(deps, ids, TrafficMode.SYNC_DIRECT)
    return await _paced_sync(deps, ids, reason or "manual")


async def _paced_sync(deps: Deps, ids: list[str], reason: str) -> dict[str, Any]:
    limits = await read_limits(deps.pool, deps.settings)
    interval = limits.rate_limit_duration_ms / 1000 / limits.rate_limit_max if limits.rate_limit_max > 0 else 0.0
    deadline = time.monotonic() + SYNC_BUDGET_S
    done = 0
    for request_id in ids:
        if time.monotonic() > deadline:
            break
        started = time.monotonic()
        await provision(deps.pool, request_id, source=deps.source, via="bulk_retry")
        done += 1
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
    if done < len(ids):
        await record_detached(deps.pool, Level.WARNING, "bulk_retry_deferred",
                              f"bulk retry without the queue ({reason}): {done} created now, {len(ids) - done}"
                              " left queued for the reconciler", {"done": done, "left": len(ids) - done,
                                                                 "reason": reason}, source=deps.source)
    return {"path": "sync", "processed_now": done, "left_for_reconciler": len(ids) - done}


async def _set_mode(deps: Deps, ids: list[str], mode: TrafficMode) -> None:
    async with db.connection(deps.pool) as conn:
        await conn.execute("UPDATE creation_requests SET mode = %s, updated_at = now()"
                           " WHERE id = ANY(%s) AND status = 'queued'", (mode.value, ids))
