"""Alert transitions: one `firing` when a watched condition starts, one `resolved` when it ends.

Each condition has a row in `alert_states` (firing + version). A transition is a conditional UPDATE
(`... WHERE firing <> new AND checked_at <= observed_at`), committed together with its outbox rows: of several
watchdogs observing the same change at once, the row lock lets exactly one record it, and an older observation
never overwrites a newer one. The unique (alert_key, version, target) of the outbox is the second guard.

PostgreSQL itself unreachable: the outbox cannot be written, so the watchdog sends that one alert directly and
remembers it in Redis (`SET NX`: one sender among several watchdogs; deleted again when the send failed, so the
next run retries). When PostgreSQL answers again, whoever deletes that key (`GETDEL`: one watchdog) records the
episode (firing, already sent; resolved, pending) in the outbox. Both PostgreSQL and Redis down: no shared state
is left to deduplicate with, so nothing is sent and an ERROR log line says so each run (documented limit).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from shared.core import db
from shared.core.health import Level, record
from shared.core.settings import Settings
from shared.operations.alert_conditions import Condition

log = logging.getLogger(__name__)

DATABASE_KEY = "database_unavailable"


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert as sent: the contract's `alert` object."""

    event: str
    level: str
    state: str  # firing | resolved
    message: str
    at: datetime

    def payload(self) -> dict[str, Any]:
        """The webhook body: Slack-compatible `text`, plus the structured `alert`."""
        return {"text": f"{self.state.upper()} [{self.level}] {self.event}: {self.message}",
                "alert": {"event": self.event, "level": self.level, "state": self.state, "message": self.message,
                          "at": self.at.isoformat()}}


def targets(settings: Settings) -> list[str]:
    """Where alerts go: the webhook and/or email, as configured."""
    found = ["webhook"] if settings.alert_webhook_url else []
    return found + (["email"] if alert_recipients(settings) else [])


def alert_recipients(settings: Settings) -> list[str]:
    """ALERT_EMAILS as a list."""
    return [a.strip() for a in settings.alert_emails.split(",") if a.strip()]


def masked_target(settings: Settings) -> dict[str, Any]:
    """The alert target as the panel shows it: scheme and host of the webhook (its path is often the secret),
    and how many email recipients (not who)."""
    url = settings.alert_webhook_url
    webhook = None
    if url is not None:
        parts = urlsplit(str(url))
        webhook = f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}/***"
    return {"webhook": webhook, "emails": len(alert_recipients(settings))}


async def record_transitions(pool: AsyncConnectionPool, settings: Settings, conditions: list[Condition],
                             observed_at: datetime, *, source: str) -> list[Alert]:
    """Record every condition whose state changed since the last observation; return the alerts it made."""
    made: list[Alert] = []
    async with db.connection(pool) as conn:
        for condition in conditions:
            if condition.firing is None:
                continue
            async with conn.transaction():
                alert = await _transition(conn, settings, condition, observed_at, source=source)
            if alert is not None:
                made.append(alert)
    return made


async def _transition(conn: AsyncConnection[Any], settings: Settings, condition: Condition,
                      observed_at: datetime, *, source: str) -> Alert | None:
    await conn.execute("INSERT INTO alert_states (key) VALUES (%s) ON CONFLICT (key) DO NOTHING", (condition.key,))
    cur = await conn.execute(
        "UPDATE alert_states SET firing = %(firing)s, version = version + 1, message = %(message)s,"
        " changed_at = now(), checked_at = %(observed)s"
        " WHERE key = %(key)s AND firing <> %(firing)s AND (checked_at IS NULL OR checked_at <= %(observed)s)"
        " RETURNING version",
        {"firing": condition.firing, "message": condition.message, "observed": observed_at, "key": condition.key})
    row = await cur.fetchone()
    if row is None:
        await conn.execute("UPDATE alert_states SET checked_at = greatest(checked_at, %s) WHERE key = %s",
                           (observed_at, condition.key))
        return None
    alert = Alert(condition.key, condition.level, "firing" if condition.firing else "resolved", condition.message,
                  observed_at)
    await _enqueue(conn, settings, alert, row["version"])
    await record(conn, Level(condition.level) if condition.firing else Level.INFO, f"alert_{alert.state}",
                 f"alert {alert.state}: {alert.event}: {alert.message}",
                 {"alert": alert.event, "state": alert.state, "targets": targets(settings)}, source=source)
    return alert


async def _enqueue(conn: AsyncConnection[Any], settings: Settings, alert: Alert, version: int, *,
                   sent: bool = False) -> None:
    for target in targets(settings):
        await conn.execute(
            "INSERT INTO alert_outbox (alert_key, version, target, event, level, state, message, at, status, sent_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END)"
            " ON CONFLICT (alert_key, version, target) DO NOTHING",
            (alert.event, version, target, alert.event, alert.level, alert.state, alert.message, alert.at,
             "sent" if sent else "pending", sent))


# -- PostgreSQL unreachable ------------------------------------------------------------------------------------

def database_alert(state: str, at: datetime) -> Alert:
    """The alert about PostgreSQL itself."""
    message = ("PostgreSQL is unreachable: creation requests answer 503" if state == "firing"
               else "PostgreSQL answers again")
    return Alert(DATABASE_KEY, "ERROR", state, message, at)


async def claim_database_alert(redis: Any, key: str) -> Alert | None:
    """The firing alert to send now, if this watchdog is the first to see PostgreSQL down (else None)."""
    alert = database_alert("firing", datetime.now(UTC))
    if await redis.set(key, json.dumps({"at": alert.at.isoformat()}), nx=True):
        return alert
    return None


async def release_database_alert(redis: Any, key: str) -> None:
    """Forget a claim whose send failed, so the next run tries again."""
    await redis.delete(key)


async def settle_database_alert(pool: AsyncConnectionPool, redis: Any, key: str, settings: Settings, *,
                                source: str) -> Alert | None:
    """PostgreSQL answers: if an outage was alerted through Redis, record it and queue its `resolved`."""
    claimed = await redis.getdel(key)
    if not claimed:
        return None
    try:
        fired_at = datetime.fromisoformat(json.loads(claimed)["at"])
    except (ValueError, KeyError, TypeError):
        fired_at = datetime.now(UTC)
    resolved = database_alert("resolved", datetime.now(UTC))
    try:
        async with db.connection(pool) as conn, conn.transaction():
            await conn.execute("INSERT INTO alert_states (key) VALUES (%s) ON CONFLICT (key) DO NOTHING",
                               (DATABASE_KEY,))
            cur = await conn.execute("UPDATE alert_states SET version = version + 2, firing = false, message = %s,"
                                     " changed_at = now(), checked_at = now() WHERE key = %s RETURNING version",
                                     (resolved.message, DATABASE_KEY))
            row = await cur.fetchone()
            version = int(row["version"]) if row else 2
            await _enqueue(conn, settings, database_alert("firing", fired_at), version - 1, sent=True)
            await _enqueue(conn, settings, resolved, version)
            await record(conn, Level.INFO, "alert_resolved", f"alert resolved: {DATABASE_KEY}: {resolved.message}",
                         {"alert": DATABASE_KEY, "state": "resolved", "down_since": fired_at.isoformat()},
                         source=source)
    except Exception:
        await redis.set(key, claimed)  # give the episode back: the next run records it
        raise
    return resolved


# -- reading ---------------------------------------------------------------------------------------------------

async def recent_alerts(pool: AsyncConnectionPool, settings: Settings, limit: int = 20) -> dict[str, Any]:
    """The panel's view: the (masked) target, the conditions firing now, and the last alerts with delivery."""
    async with db.connection(pool) as conn:
        cur = await conn.execute(
            "SELECT alert_key AS event, version, min(level) AS level, min(state) AS state, min(message) AS message,"
            " min(at) AS at, json_agg(json_build_object('target', target, 'status', status, 'attempts', attempts,"
            " 'last_error', last_error, 'sent_at', sent_at) ORDER BY target) AS deliveries"
            " FROM alert_outbox GROUP BY alert_key, version ORDER BY min(at) DESC, min(id) DESC LIMIT %s", (limit,))
        items = await cur.fetchall()
        cur = await conn.execute("SELECT key, message, changed_at FROM alert_states WHERE firing ORDER BY key")
        firing = await cur.fetchall()
    return {"target": masked_target(settings),
            "firing": [{"event": r["key"], "message": r["message"], "since": r["changed_at"].isoformat()}
                       for r in firing],
            "items": [{**r, "at": r["at"].isoformat()} for r in items]}
