"""Delivery of the welcome-email outbox.

The outbox row is written in the same transaction as the user, so no user is ever left without a pending
email. Delivery is **at-least-once**: the row is locked, a fresh one-time token is minted, SES is called,
and only then is the row marked sent, in one transaction. A crash between SES accepting and that commit
sends the email again later (with a new link; the unstored first token never works). We chose a rare
duplicate over a user who silently never gets the link they need to log in.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from psycopg_pool import AsyncConnectionPool

from shared import db, tracing
from shared.health import Level, record
from shared.mailer import Mailer
from shared.settings import Settings

log = logging.getLogger(__name__)

MAX_EMAIL_ATTEMPTS = 8


@dataclass(slots=True)
class DeliveryReport:
    """What one delivery pass did."""

    sent: int = 0
    failed: int = 0
    gave_up: int = 0
    deferred: int = 0  # left in the outbox: the global sending rate had no slot in time
    # The link of the last email sent: only `invoke account create` shows it, and only in development.
    last_link: str | None = None


def hash_token(token: str) -> str:
    """Only this hash of a set-password token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def _retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(3600, 30 * 2 ** max(0, attempts - 1)))


async def deliver_pending(pool: AsyncConnectionPool, mailer: Mailer, settings: Settings, *,
                          source: str, user_id: Any = None, limit: int = 20) -> DeliveryReport:
    """Send due outbox emails (only `user_id`'s when given), each in its own transaction, each after taking a
    slot of the system-wide sending rate (`shared.email_rate`); none in time: the rest wait for a later pass."""
    report = DeliveryReport()
    for _ in range(limit):
        # Taken before any row is locked, so no connection is held while waiting for a slot.
        if mailer.rate is not None and not await mailer.rate.wait_for_slot(settings.email_rate_wait_s):
            report.deferred += 1
            break
        async with db.connection(pool) as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT o.id, o.user_id, o.request_id, o.attempts, u.email, u.full_name"
                " FROM email_outbox o JOIN users u ON u.id = o.user_id"
                " WHERE o.status = 'pending' AND o.next_attempt_at <= now()"
                " AND (%(user)s::uuid IS NULL OR o.user_id = %(user)s::uuid)"
                " ORDER BY o.id LIMIT 1 FOR UPDATE OF o SKIP LOCKED",
                {"user": user_id},
            )
            row = await cur.fetchone()
            if row is None:
                break
            token = secrets.token_urlsafe(32)
            link = f"{settings.set_password_url}?{urlencode({'token': token})}"
            ids = {"user_id": str(row["user_id"]), "request_id": row["request_id"]}
            try:
                with tracing.span("ses.send_email", kind="CLIENT", attributes={"request_id": row["request_id"]}):
                    message_id = await asyncio.wait_for(
                        asyncio.to_thread(mailer.send_welcome, to=row["email"], full_name=row["full_name"],
                                          set_password_link=link),
                        settings.email_send_timeout_s,
                    )
            except Exception as exc:
                attempts = row["attempts"] + 1
                gave_up = attempts >= MAX_EMAIL_ATTEMPTS
                await conn.execute(
                    "UPDATE email_outbox SET attempts = %s, last_error = %s, next_attempt_at = now() + %s,"
                    " status = %s WHERE id = %s",
                    (attempts, type(exc).__name__, _retry_delay(attempts), "failed" if gave_up else "pending",
                     row["id"]),
                )
                await record(conn, Level.ERROR if gave_up else Level.WARNING,
                             "email_failed" if gave_up else "email_retry",
                             f"welcome email attempt {attempts} failed ({type(exc).__name__})"
                             + ("; giving up" if gave_up else "; will retry"),
                             {**ids, "attempts": attempts, "error": type(exc).__name__}, source=source)
                report.failed += 1
                report.gave_up += int(gave_up)
                continue
            await conn.execute(
                "UPDATE password_setup_tokens SET used_at = now() WHERE user_id = %s AND used_at IS NULL",
                (row["user_id"],),
            )
            await conn.execute(
                "INSERT INTO password_setup_tokens (token_hash, user_id, expires_at)"
                " VALUES (%s, %s, now() + %s)",
                (hash_token(token), row["user_id"], timedelta(hours=settings.set_password_ttl_hours)),
            )
            await conn.execute(
                "UPDATE email_outbox SET status = 'sent', sent_at = now(), attempts = attempts + 1,"
                " provider_id = %s, last_error = NULL WHERE id = %s",
                (message_id, row["id"]),
            )
            report.sent += 1
            report.last_link = link
    return report
