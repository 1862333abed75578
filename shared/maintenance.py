"""Scheduled maintenance: health-log retention."""

from __future__ import annotations

import logging
from typing import Any

from shared import health
from shared.bootstrap import Deps
from shared.errors import DatabaseUnavailable

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
    return {"deleted": deleted, "retention_days": days}
