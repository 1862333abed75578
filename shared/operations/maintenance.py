"""Scheduled maintenance: health-log and audit retention, personal-data retention, then a reconcile pass and
the email outbox; and the per-minute tick (a kill switch whose time is up returns by itself even when no request
arrives)."""

from __future__ import annotations

import logging
from typing import Any

from shared.bootstrap import Deps
from shared.bulk.drain import drain
from shared.core import db, health
from shared.core.audit import AUDIT_RETENTION_DAYS, record_audit
from shared.core.errors import DatabaseUnavailable
from shared.creation.outbox import deliver_pending
from shared.creation.reconciler import reconcile
from shared.creation.traffic import revert_if_due
from shared.operations.retention import Redacted, redact_expired

log = logging.getLogger(__name__)


async def run_cleanup(deps: Deps, *, actor: str) -> dict[str, Any]:
    """Delete health logs older than their retention (7 days by default) and audit rows older than 400 days,
    remove the personal data of rows past PII_RETENTION_DAYS (90 by default; shared/operations/retention.py),
    with an INFO event and an audit row in the same transaction. A failure leaves an ERROR event (or, with the
    database down, an ERROR log line) and is raised to the caller."""
    days = deps.settings.log_retention_days
    try:
        deleted, audit_deleted, redacted = await _clean(deps, days, actor)
    except DatabaseUnavailable:
        log.error("health log cleanup failed: database unavailable")
        raise
    except Exception as exc:
        await health.record_detached(deps.pool, health.Level.ERROR, "cleanup_failed",
                                     f"health log cleanup failed ({type(exc).__name__})",
                                     {"retention_days": days, "error": type(exc).__name__}, source=deps.source)
        raise
    return {"deleted": deleted, "retention_days": days, "audit_deleted": audit_deleted,
            "audit_retention_days": AUDIT_RETENTION_DAYS, "pii_redacted": redacted.to_dict(),
            "pii_retention_days": deps.settings.pii_retention_days, "reconciled": await _reconcile(deps)}


async def _clean(deps: Deps, days: int, actor: str) -> tuple[int, int, Redacted]:
    pii_days = deps.settings.pii_retention_days
    async with db.connection(deps.pool) as conn, conn.transaction():
        # cleanup_audit_log() runs as its owner (migration 0016): the runtime role cannot delete audit rows.
        cur = await conn.execute("SELECT cleanup_health_logs(make_interval(days => %s)) AS deleted,"
                                 " cleanup_audit_log() AS audit_deleted", (days,))
        row = await cur.fetchone() or {}
        deleted, audit_deleted = int(row.get("deleted") or 0), int(row.get("audit_deleted") or 0)
        redacted = await redact_expired(conn, pii_days)
        facts = {"deleted": deleted, "retention_days": days, "audit_deleted": audit_deleted,
                 "audit_retention_days": AUDIT_RETENTION_DAYS, "pii_redacted": redacted.to_dict(),
                 "pii_retention_days": pii_days}
        await health.record(conn, health.Level.INFO, "health_logs_cleaned",
                            f"deleted {deleted} health log(s) older than {days} days and {audit_deleted} audit"
                            f" row(s) older than {AUDIT_RETENTION_DAYS} days; removed the personal data of"
                            f" {redacted.requests} request(s), {redacted.batches} bulk upload(s),"
                            f" {redacted.outbox} outbox row(s) and {redacted.events} event(s) older than"
                            f" {pii_days} days", facts, source=deps.source)
        await record_audit(conn, actor=actor, action="cleanup", reason="retention", before=None, after=facts)
    return deleted, audit_deleted, redacted


async def run_tick(deps: Deps) -> dict[str, Any]:
    """The per-minute duty: return the kill switch when its `revert_after_s` is up (nothing else is written
    when nothing is due)."""
    reverted = await revert_if_due(deps.pool, source=deps.source)
    if reverted is not None:
        deps.mode_cache.invalidate()
    return {"mode_reverted": reverted is not None, "mode": reverted.mode.value if reverted else None}


async def _reconcile(deps: Deps) -> dict[str, Any] | None:
    """The scheduled pass of the reconciler and the email outbox (consumers run them too, more often).

    Its failure does not fail the cleanup; it leaves a WARNING event and answers null."""
    try:
        report = await reconcile(deps.pool, deps.queue, grace_s=max(60.0, deps.settings.reconcile_grace_s),
                                 source=deps.source)
        await deliver_pending(deps.pool, deps.mailer, deps.settings, source=deps.source)
    except Exception as exc:
        await health.record_detached(deps.pool, health.Level.WARNING, "maintenance_incomplete",
                                     f"scheduled reconcile did not finish ({type(exc).__name__})",
                                     {"error": type(exc).__name__}, source=deps.source)
        return None
    return report.to_dict()


async def run_drain(deps: Deps) -> dict[str, Any]:
    """The scheduled drain (every minute): bulk rows recorded while the queue was off, created at the global
    rate limit for at most `BULK_DRAIN_BUDGET_S`. A failure leaves an ERROR event and is raised."""
    try:
        report = await drain(deps, budget_s=deps.settings.bulk_drain_budget_s, name=f"drain/{deps.source}")
    except DatabaseUnavailable:
        log.error("bulk drain failed: database unavailable")
        raise
    except Exception as exc:
        await health.record_detached(deps.pool, health.Level.ERROR, "bulk_drain_failed",
                                     f"scheduled bulk drain failed ({type(exc).__name__})",
                                     {"error": type(exc).__name__}, source=deps.source)
        raise
    return report.to_dict()
