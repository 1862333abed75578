"""Delivery of the alert outbox: POST to ALERT_WEBHOOK_URL, email through SES to ALERT_EMAILS.

Only the watchdog delivers (never a request). Each row is locked (`FOR UPDATE SKIP LOCKED`) while it is sent and
marked sent in the same transaction, so two watchdogs never send one row twice; a failed send stays pending with
a growing delay (`ALERT_RETRY_BASE_S` doubled per attempt, at most 5 min) and a WARNING event. The first failure
of a target ends that target's pass: a webhook that is down or slow costs one timeout per run, not one per alert.
As with the welcome email, a crash between the receiver accepting and the commit sends that alert again later.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from psycopg_pool import AsyncConnectionPool

from shared.core import db
from shared.core.health import Level, record
from shared.core.settings import Settings
from shared.creation.mailer import Mailer
from shared.operations.alerts import Alert, alert_recipients

log = logging.getLogger(__name__)

MAX_RETRY_DELAY_S = 300
SENT_RETENTION_DAYS = 30  # delivered alerts stay visible (panel, psql) this long


@dataclass(slots=True)
class AlertDeliveryReport:
    """What one delivery pass did."""

    sent: int = 0
    failed: int = 0
    stopped: list[str] = field(default_factory=list)  # targets given up for this pass

    def to_dict(self) -> dict[str, Any]:
        """JSON shape in the watchdog's answer."""
        return {"sent": self.sent, "failed": self.failed, "stopped": self.stopped}


def retry_delay(settings: Settings, attempts: int) -> timedelta:
    """How long a failed alert waits before its next try."""
    return timedelta(seconds=min(MAX_RETRY_DELAY_S, settings.alert_retry_base_s * 2 ** max(0, attempts - 1)))


async def post_webhook(settings: Settings, alert: Alert) -> None:
    """POST one alert; raises unless the receiver answers 2xx within ALERT_TIMEOUT_S."""
    if settings.alert_webhook_url is None:
        raise RuntimeError("ALERT_WEBHOOK_URL is not set")
    async with httpx.AsyncClient(timeout=settings.alert_timeout_s) as client:
        answer = await asyncio.wait_for(client.post(str(settings.alert_webhook_url), json=alert.payload()),
                                        settings.alert_timeout_s + 1)
    if not answer.is_success:
        raise WebhookRefused(f"HTTP {answer.status_code}")


class WebhookRefused(Exception):
    """The receiver answered, but not with 2xx."""


async def send_email(settings: Settings, mailer: Mailer, alert: Alert) -> None:
    """Email one alert to ALERT_EMAILS through SES (in a thread: boto3 blocks)."""
    payload = alert.payload()
    await asyncio.wait_for(asyncio.to_thread(mailer.send_alert, to=alert_recipients(settings),
                                             subject=f"[provisioner] {payload['text']}"[:200],
                                             text=f"{payload['text']}\n\nat {alert.at.isoformat()}\n"),
                           settings.alert_timeout_s + 1)


async def send(settings: Settings, mailer: Mailer, target: str, alert: Alert) -> None:
    """Send one alert to one target."""
    if target == "webhook":
        await post_webhook(settings, alert)
    else:
        await send_email(settings, mailer, alert)


def error_text(exc: BaseException) -> str:
    """What is kept of a failed send: the HTTP status or the exception's class (never a URL or address)."""
    return str(exc) if isinstance(exc, WebhookRefused) else type(exc).__name__


async def deliver_alerts(pool: AsyncConnectionPool, settings: Settings, mailer: Mailer, *, source: str,
                         limit: int = 50) -> AlertDeliveryReport:
    """Send due alerts, oldest first, each in its own transaction."""
    report = AlertDeliveryReport()
    for _ in range(limit):
        async with db.connection(pool) as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT id, target, event, level, state, message, at, attempts FROM alert_outbox"
                " WHERE status = 'pending' AND next_attempt_at <= now() AND NOT (target = ANY(%s::text[]))"
                " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED", (report.stopped,))
            row = await cur.fetchone()
            if row is None:
                break
            alert = Alert(row["event"], row["level"], row["state"], row["message"], row["at"])
            try:
                await send(settings, mailer, row["target"], alert)
            except Exception as exc:
                attempts = row["attempts"] + 1
                await conn.execute(
                    "UPDATE alert_outbox SET attempts = %s, last_error = %s, next_attempt_at = now() + %s"
                    " WHERE id = %s", (attempts, error_text(exc), retry_delay(settings, attempts), row["id"]))
                await record(conn, Level.WARNING, "alert_delivery_failed",
                             f"alert {alert.event} ({alert.state}) not delivered to the {row['target']}"
                             f" (attempt {attempts}: {error_text(exc)}); it stays queued",
                             {"alert": alert.event, "state": alert.state, "target": row["target"],
                              "attempts": attempts, "error": error_text(exc)}, source=source)
                report.failed += 1
                report.stopped.append(row["target"])
                continue
            await conn.execute("UPDATE alert_outbox SET status = 'sent', sent_at = now(), attempts = attempts + 1,"
                               " last_error = NULL WHERE id = %s", (row["id"],))
            report.sent += 1
    async with db.connection(pool) as conn:
        await conn.execute("DELETE FROM alert_outbox WHERE status = 'sent' AND at < now() - %s",
                           (timedelta(days=SENT_RETENTION_DAYS),))
    return report
