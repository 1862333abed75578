"""What the watchdog looks at: each condition that needs a person, observed from PostgreSQL and Redis.

A condition is observed as firing (True), fine (False) or unknown (None: its source could not be read, so its
recorded state is left as it is). Windowed conditions (failures, fallback) fire while something happened in the
last `ALERT_WINDOW_S` and resolve once a whole window passed without it: one alert per episode, not per request.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from psycopg import AsyncConnection

from shared.core.settings import Settings
from shared.creation.queueing import JobQueue

log = logging.getLogger(__name__)

REDIS_PING_TRIES = 3  # one lost packet is not an outage


@dataclass(frozen=True, slots=True)
class Condition:
    """One observation of a watched condition (ids and counts only in `message`: it goes to chat channels)."""

    key: str
    level: str  # WARNING | ERROR
    firing: bool | None
    message: str


_STATE_SQL = """
SELECT
  (SELECT value FROM system_config WHERE key = 'traffic_mode') AS mode,
  (SELECT count(*) FROM creation_requests WHERE fallback AND created_at > now() - %(window)s) AS fallbacks,
  (SELECT count(*) FROM creation_requests WHERE status = 'failed' AND updated_at > now() - %(window)s) AS failed,
  (SELECT count(*) FROM email_outbox WHERE status = 'pending' AND attempts > 0) AS emails_retrying,
  (SELECT count(*) FROM system_health_logs WHERE event = 'email_failed' AND created_at > now() - %(window)s)
      AS emails_given_up,
  (SELECT max(created_at) FROM system_health_logs WHERE event = 'health_logs_cleaned') AS last_cleanup,
  (SELECT max(created_at) FROM system_health_logs WHERE event = 'cleanup_failed') AS last_cleanup_failure,
  (SELECT min(created_at) < now() - %(overdue)s FROM system_health_logs) AS cleanup_was_due,
  (SELECT max(created_at) > now() - %(overdue)s FROM system_health_logs WHERE event = 'health_logs_cleaned')
      AS cleaned_recently,
  (SELECT count(*) FROM system_health_logs WHERE event = 'sign_in_attack' AND created_at > now() - %(window)s)
      AS sign_in_attacks
"""


async def database_conditions(conn: AsyncConnection[Any], settings: Settings) -> tuple[str, list[Condition]]:
    """(configured traffic mode, the conditions read from PostgreSQL), in one round trip."""
    window = timedelta(seconds=settings.alert_window_s)
    minutes = f"{settings.alert_window_s / 60:g} min"
    cur = await conn.execute(_STATE_SQL, {"window": window,
                                          "overdue": timedelta(hours=settings.cleanup_overdue_hours)})
    row = await cur.fetchone()
    if row is None:  # a SELECT without FROM always answers one row
        raise RuntimeError("the alert state query returned no row")
    failing_cleanup = row["last_cleanup_failure"] is not None and (
        row["last_cleanup"] is None or row["last_cleanup_failure"] > row["last_cleanup"])
    overdue = bool(row["cleanup_was_due"]) and not row["cleaned_recently"]
    emails = int(row["emails_retrying"]) + int(row["emails_given_up"])
    conditions = [
        Condition("fallback_active", "WARNING", row["fallbacks"] > 0,
                  f"automatic fallback active: {row['fallbacks']} creation request(s) served synchronously in the"
                  f" last {minutes}" if row["fallbacks"] else "no creation request served by fallback lately"),
        Condition("creation_failed", "ERROR", row["failed"] > 0,
                  f"{row['failed']} creation request(s) failed for good in the last {minutes}"
                  if row["failed"] else f"no creation request failed in the last {minutes}"),
        Condition("email_failing", "WARNING", emails > 0,
                  f"welcome emails failing: {row['emails_retrying']} retrying, {row['emails_given_up']} given up"
                  f" in the last {minutes}" if emails else "welcome emails are going out"),
        Condition("cleanup_failing", "WARNING", failing_cleanup or overdue,
                  ("health log cleanup failing: its last run failed" if failing_cleanup else
                   f"health log cleanup overdue: no successful run in {settings.cleanup_overdue_hours} h")
                  if failing_cleanup or overdue else "health log cleanup ran"),
        # An account's sign-in attempts reached SIGN_IN_ACCOUNT_ALERT_AT (shared/accounts/signin_throttle.py):
        # the account is not locked, so a person decides (disable it, block addresses at the front).
        Condition("sign_in_attack", "WARNING", row["sign_in_attacks"] > 0,
                  f"sign-in attack: {row['sign_in_attacks']} account ceiling(s) of"
                  f" {settings.sign_in_account_alert_at} attempts reached in the last {minutes}"
                  if row["sign_in_attacks"] else f"no sign-in attack in the last {minutes}"),
    ]
    return str(row["mode"]), conditions


async def redis_reachable(queue: JobQueue) -> bool:
    """True when Redis answers a PING within the request-path budget, in one of a few tries."""
    for attempt in range(REDIS_PING_TRIES):
        try:
            await queue.ping_ms()
            return True
        except Exception as exc:
            log.info("watchdog: Redis ping %s failed (%s)", attempt + 1, type(exc).__name__)
            await asyncio.sleep(0.3)
    return False


async def redis_conditions(queue: JobQueue, mode: str | None, settings: Settings) -> list[Condition]:
    """Redis reachability, and (when it is reachable and the queue is in use) whether a consumer lives."""
    if not await redis_reachable(queue):
        return [Condition("redis_unavailable", "ERROR", True,
                          "Redis is unreachable: creation requests fall back to synchronous creation"),
                Condition("no_consumer", "WARNING", None, "")]
    try:
        alive = len(await queue.live_consumers(details=False))
    except Exception as exc:
        log.info("watchdog: consumer heartbeats unreadable (%s)", type(exc).__name__)
        alive = None
    queueing = mode == "async_queue"
    no_consumer = None if alive is None or mode is None else (queueing and alive == 0)
    return [Condition("redis_unavailable", "ERROR", False, "Redis answers again"),
            Condition("no_consumer", "WARNING", no_consumer,
                      "no live queue consumer while the mode is async_queue" if no_consumer
                      else f"{alive} live queue consumer(s)" if queueing else "queue not in use (sync_direct)")]
