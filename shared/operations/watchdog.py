"""Use case: the scheduled watchdog (every minute). Observe every condition that needs a person, record the
transitions as alerts, deliver what is due. See `alert_conditions`, `alerts` and `alert_delivery`."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from shared.bootstrap import Deps
from shared.core import db
from shared.core.errors import DatabaseUnavailable
from shared.operations.alert_conditions import database_conditions, redis_conditions
from shared.operations.alert_delivery import deliver_alerts, error_text, send
from shared.operations.alerts import (
    claim_database_alert,
    record_transitions,
    release_database_alert,
    settle_database_alert,
    targets,
)

log = logging.getLogger(__name__)


def database_claim_key(deps: Deps) -> str:
    """The Redis key remembering that a `database_unavailable` alert went out."""
    return f"{deps.settings.queue_prefix}:{deps.settings.queue_name}:provisioner:alert:database_unavailable"


async def run_watchdog(deps: Deps) -> dict[str, Any]:
    """One pass: observe, record transitions (one alert each, whatever the number of watchdogs), deliver."""
    observed_at = datetime.now(UTC)
    try:
        async with db.connection(deps.pool) as conn:
            mode, conditions = await database_conditions(conn, deps.settings)
    except DatabaseUnavailable:
        return await _database_down(deps)
    conditions += await redis_conditions(deps.queue, mode, deps.settings)
    made = []
    try:
        settled = await settle_database_alert(deps.pool, deps.queue.client, database_claim_key(deps),
                                              deps.settings, source=deps.source)
        if settled is not None:
            made.append(settled)
    except Exception as exc:  # Redis down: its own alert says so; the claim is settled on a later run
        log.info("watchdog: database alert claim unreadable (%s)", type(exc).__name__)
    made += await record_transitions(deps.pool, deps.settings, conditions, observed_at, source=deps.source)
    delivery = await deliver_alerts(deps.pool, deps.settings, deps.mailer, source=deps.source)
    return {"database": True, "conditions": {c.key: c.firing for c in conditions},
            "transitions": [a.payload()["alert"] for a in made], "delivery": delivery.to_dict()}


async def _database_down(deps: Deps) -> dict[str, Any]:
    """PostgreSQL unreachable: send its alert directly, once (a Redis claim), or say why not."""
    answer: dict[str, Any] = {"database": False, "conditions": {"database_unavailable": True}, "transitions": []}
    try:
        alert = await claim_database_alert(deps.queue.client, database_claim_key(deps))
    except Exception as exc:
        log.error("watchdog: PostgreSQL and Redis both unreachable (%s): no alert can be deduplicated,"
                  " none sent", type(exc).__name__)
        return {**answer, "delivery": {"sent": 0, "failed": 0, "stopped": ["redis_unavailable"]}}
    if alert is None:
        log.error("watchdog: PostgreSQL still unreachable (alert already sent)")
        return {**answer, "delivery": {"sent": 0, "failed": 0, "stopped": []}}
    answer["transitions"].append(alert.payload()["alert"])
    sent, failed = 0, 0
    for target in targets(deps.settings):
        try:
            await send(deps.settings, deps.mailer, target, alert)
            sent += 1
        except Exception as exc:
            failed += 1
            log.error("watchdog: PostgreSQL unreachable; alert to the %s failed (%s)", target, error_text(exc))
    if sent == 0:
        await release_database_alert(deps.queue.client, database_claim_key(deps))  # the next run tries again
    log.error("watchdog: PostgreSQL unreachable; alert sent to %s of %s target(s)", sent, sent + failed)
    return {**answer, "delivery": {"sent": sent, "failed": failed, "stopped": []}}
