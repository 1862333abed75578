"""Nothing lost: requests still unfinished in PostgreSQL are matched against the queue and repaired.

Runs at consumer start, periodically while a consumer lives, and from the scheduled maintenance.
- async request, job gone from Redis (Redis restarted empty, an enqueue that never landed): enqueued again;
- async request whose job failed for good without the consumer recording it (stalled too often): marked failed;
- sync request left unfinished by a crash between recording and creating: created now, by the same code path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool

from shared.core import db
from shared.core.health import Level, record, record_detached
from shared.creation.provisioning import provision
from shared.creation.queueing import JobQueue

log = logging.getLogger(__name__)

STALLED_OUT = "the job was interrupted too many times (consumer crashes); retry it from the panel"


@dataclass
class ReconcileReport:
    """What one pass found and did."""

    checked: int = 0
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    provisioned: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON summary (ids only)."""
        return {"checked": self.checked, "requeued": len(self.requeued), "failed": len(self.failed),
                "provisioned": len(self.provisioned), "sample": (self.requeued + self.failed)[:10]}


async def reconcile(pool: AsyncConnectionPool, queue: JobQueue, *, grace_s: float, source: str,
                    limit: int = 1000) -> ReconcileReport:
    """One pass over requests unfinished for longer than `grace_s`."""
    report = ReconcileReport()
    async with db.connection(pool) as conn:
        cur = await conn.execute(
            "SELECT id, mode, status FROM creation_requests WHERE status IN ('queued', 'processing')"
            " AND updated_at < now() - make_interval(secs => %s)"
            " AND NOT (batch_id IS NOT NULL AND mode = 'sync_direct')"  # bulk rows off the queue: the drain's
            " ORDER BY created_at LIMIT %s",
            (grace_s, limit),
        )
        rows = await cur.fetchall()
    for row in rows:
        report.checked += 1
        request_id = row["id"]
        if row["mode"] == "sync_direct":
            outcome = await provision(pool, request_id, source=source, via="reconciler")
            if not outcome.already_done:
                report.provisioned.append(request_id)
            continue
        state = await queue.queue.getJobState(request_id)
        if state == "unknown":
            await queue.enqueue(request_id, timeout_s=5)
            await _touch(pool, request_id)
            report.requeued.append(request_id)
        elif state == "failed":
            await _mark_stalled_out(pool, request_id, source)
            report.failed.append(request_id)
    if report.requeued or report.failed or report.provisioned:
        await record_detached(
            pool, Level.WARNING, "reconciled",
            f"reconciler repaired {len(report.requeued)} lost job(s), finished {len(report.provisioned)} "
            f"interrupted sync request(s), failed {len(report.failed)} stalled request(s)",
            report.to_dict(), source=source)
    return report


async def _touch(pool: AsyncConnectionPool, request_id: str) -> None:
    async with db.connection(pool) as conn:
        await conn.execute("UPDATE creation_requests SET status = 'queued', updated_at = now() WHERE id = %s"
                           " AND status IN ('queued', 'processing')", (request_id,))


async def _mark_stalled_out(pool: AsyncConnectionPool, request_id: str, source: str) -> None:
    async with db.connection(pool) as conn, conn.transaction():
        cur = await conn.execute(
            "UPDATE creation_requests SET status = 'failed', error_code = 'stalled', error = %s, updated_at = now()"
            " WHERE id = %s AND status IN ('queued', 'processing') RETURNING id", (STALLED_OUT, request_id))
        if await cur.fetchone():
            await record(conn, Level.ERROR, "creation_failed", "user creation failed for good: job stalled out",
                         {"request_id": request_id, "error_code": "stalled"}, source=source)
