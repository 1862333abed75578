"""Scheduled maintenance: health-log retention, then a reconcile pass and the email outbox."""

from __future__ import annotations

import logging
from typing import Any

from shared import health
from shared.bootstrap import Deps
from shared.bulk_drain import drain
from shared.errors import DatabaseUnavailable
from shared.outbox import deliver_pending
from shared.reconciler import reconcile

log = logging.getLogger(__name__)


async def run_cleanup(deps: Deps) -> dict[str, Any]:
    """Delete health logs older than the retention. A failure leaves an ERROR event (or, with the database
    down, an ERROR log line) and is raised to the caller."""
    days = deps.settings.log_retention_days
    try:
        deleted = await health.cleanup(deps.pool, days, source=deps.source)
    except DatabaseUnavailable:
        log.error("health log cleanup failed: database unavailable")
        raise
    except Exception as exc:
        await health.record_detached(deps.pool, health.Level.ERROR, "cleanup_failed",
                                     f"health log cleanup failed ({type(exc).__name__})",
                                     {"retention_days": days, "error": type(exc).__name__}, source=deps.source)
        raise
    return {"deleted": deleted, "retention_days": days, "reconciled": await _reconcile(deps)}


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
