"""Admin use cases: the switch as seen by an instance, system metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from shared.bootstrap import Deps
from shared.core import db
from shared.creation.limits import read_limits
from shared.creation.models import TrafficMode
from shared.creation.traffic import ModeState, read_mode

log = logging.getLogger(__name__)


def effective(configured: TrafficMode, fallback_reason: str | None) -> tuple[str, str]:
    """(effective_mode, effective_reason): what a creation request gets right now, and why."""
    if configured is TrafficMode.SYNC_DIRECT:
        return TrafficMode.SYNC_DIRECT.value, "manual"
    if fallback_reason:
        return TrafficMode.SYNC_DIRECT.value, fallback_reason
    return TrafficMode.ASYNC_QUEUE.value, "configured"


def mode_view(state: ModeState, fallback_reason: str | None) -> dict[str, Any]:
    """The contract's answer of GET/POST /api/admin/system/mode."""
    effective_mode, effective_reason = effective(state.mode, fallback_reason)
    return {**state.to_dict(), "effective_mode": effective_mode, "effective_reason": effective_reason}


async def redis_view(deps: Deps, *, with_counts: bool = True
                     ) -> tuple[dict[str, Any], dict[str, int] | None, list[dict[str, Any]]]:
    """Redis availability, queue counts and live consumers, bounded so a hanging Redis costs < 1 s."""
    try:
        latency = await deps.queue.ping_ms()
        if with_counts:
            counts, consumers = await asyncio.wait_for(
                asyncio.gather(deps.queue.counts(), deps.queue.live_consumers()), deps.settings.redis_timeout_s * 2)
        else:
            counts, consumers = None, await deps.queue.live_consumers(details=False)
    except Exception as exc:
        log.info("metrics: Redis unavailable (%s)", type(exc).__name__)
        return {"available": False, "latency_ms": None}, None, []
    return {"available": True, "latency_ms": round(latency, 3)}, counts, consumers


def observed_fallback_reason(deps: Deps, redis_available: bool, consumers_alive: int) -> str | None:
    """Why a creation request would not be queued, from an observation that changes no state (admin reads
    must not open this instance's breaker or write transition events: the create path does that)."""
    if not redis_available or deps.breaker.is_open:
        return "redis_unavailable"
    if consumers_alive == 0 and deps.settings.no_consumer_fallback:
        return "no_consumer"
    return None


async def current_mode_view(deps: Deps, state: ModeState | None = None) -> dict[str, Any]:
    """The switch as stored (read fresh, not from the cache) and the effective mode, observed without side
    effects."""
    state = state or await read_mode(deps.pool)
    redis, _, consumers = await redis_view(deps, with_counts=False)
    return mode_view(state, observed_fallback_reason(deps, redis["available"], len(consumers)))


async def system_metrics(deps: Deps) -> dict[str, Any]:
    """Queue, consumers, switch and lifetime totals; answers within 1 s even when Redis is down."""
    state = await deps.mode_cache.current()
    redis, counts, consumers = await redis_view(deps)
    effective_mode, effective_reason = effective(
        state.mode, observed_fallback_reason(deps, redis["available"], len(consumers)))
    async with db.connection(deps.pool) as conn:
        cur = await conn.execute(
            "SELECT"
            " (SELECT EXTRACT(EPOCH FROM now() - min(created_at)) FROM creation_requests"
            "   WHERE status = 'queued') AS oldest_waiting_age_s,"
            " (SELECT count(*) FROM creation_requests WHERE status = 'created') AS created,"
            " (SELECT count(*) FROM creation_requests WHERE status = 'failed') AS failed,"
            " (SELECT count(*) FROM creation_requests WHERE status IN ('queued', 'processing')) AS pending,"
            " (SELECT count(*) FROM creation_requests WHERE fallback"
            "   AND created_at > now() - interval '1 hour') AS fallbacks_last_hour,"
            " (SELECT count(*) FROM email_outbox WHERE status = 'pending') AS emails_pending,"
            " (SELECT count(*) FROM email_outbox WHERE status = 'failed') AS emails_failed"
        )
        totals = await cur.fetchone() or {}
        cur = await conn.execute(
            "SELECT to_char(date_trunc('minute', finished_at AT TIME ZONE 'UTC'),"
            " 'YYYY-MM-DD\"T\"HH24:MI:00Z') AS minute,"
            " count(*) FILTER (WHERE outcome IN ('created', 'already_done')) AS completed,"
            " count(*) FILTER (WHERE outcome = 'failed') AS failed,"
            " count(*) FILTER (WHERE outcome = 'retry') AS retried"
            " FROM creation_attempts WHERE finished_at > now() - interval '1 hour'"
            " GROUP BY 1 ORDER BY 1"
        )
        history = [{"minute": r["minute"], "completed": int(r["completed"]), "failed": int(r["failed"]),
                    "retried": int(r["retried"])} for r in await cur.fetchall()]
    limits = await read_limits(deps.pool, deps.settings)
    oldest = totals.get("oldest_waiting_age_s")
    return {
        "mode": state.mode.value,
        "effective_mode": effective_mode,
        "effective_reason": effective_reason,
        "redis": redis,
        "queue": counts,
        "workers": {"alive": len(consumers), "items": consumers},
        "oldest_waiting_age_s": round(float(oldest), 3) if oldest is not None else None,
        "rate_limit": {"max": limits.rate_limit_max, "duration_ms": limits.rate_limit_duration_ms},
        "concurrency": limits.concurrency,
        "totals": {key: int(totals.get(key) or 0) for key in
                   ("created", "failed", "pending", "fallbacks_last_hour", "emails_pending", "emails_failed")},
        "history": history,
    }
