"""Delivery of the welcome-email outbox.

The outbox row is written in the same transaction as the user, so no user is ever left without a pending
email. Delivery is **at-least-once**: the row is claimed (one statement: its `next_attempt_at` pushed past a
lease, so no other sender takes it meanwhile; the consumer's creation claims it as it writes it), a fresh
one-time token is minted, SES is called with no transaction open, and only then one statement records the
send (the token's hash stored, the row marked sent). A crash between SES accepting and that record sends the
email again once the lease ends (with a new link; the unstored first token never works). We chose a rare
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

from shared.core import db, tracing
from shared.core.health import Level, log_event, prepared
from shared.core.settings import Settings
from shared.creation.mailer import Mailer

log = logging.getLogger(__name__)

MAX_EMAIL_ATTEMPTS = 8
CLAIM_MARGIN_S = 10.0  # a claim outlives the slot wait and the SES call by this much


@dataclass(slots=True)
class DeliveryReport:
    """What one delivery pass did."""

    sent: int = 0
    failed: int = 0
    gave_up: int = 0
    deferred: int = 0  # left in the outbox: the global sending rate had no slot in time
    # The link of the last email sent: only `invoke account create` shows it, and only in development.
    last_link: str | None = None


@dataclass(frozen=True, slots=True)
class EmailClaim:
    """One outbox row claimed by its sender (`next_attempt_at` pushed past the lease), with what the email needs."""

    outbox_id: int
    user_id: Any
    request_id: str
    attempts: int
    email: str
    full_name: str


def hash_token(token: str) -> str:
    """Only this hash of a set-password token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def _retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(3600, 30 * 2 ** max(0, attempts - 1)))


def claim_lease_s(settings: Settings) -> float:
    """How long a claimed row is left alone by other senders: a slot wait and a whole SES call, and a margin.
    A sender that died holding a claim is replaced when it ends (at-least-once)."""
    return settings.email_rate_wait_s + settings.email_send_timeout_s + CLAIM_MARGIN_S


async def deliver_pending(pool: AsyncConnectionPool, mailer: Mailer, settings: Settings, *,
                          source: str, user_id: Any = None, limit: int = 20) -> DeliveryReport:
    """Send due outbox emails (only `user_id`'s when given), one at a time, each after taking a slot of the
    system-wide sending rate (`shared.creation.email_rate`); none in time: the rest wait for a later pass.

    Each row is claimed by one statement (a lease, `SKIP LOCKED`), sent with no transaction open, and its
    result recorded by one more statement (`send_claimed`)."""
    report = DeliveryReport()
    for _ in range(limit):
        # Taken before any row is claimed, so a row is not leased while its sender waits for a slot.
        if mailer.rate is not None and not await mailer.rate.wait_for_slot(settings.email_rate_wait_s):
            report.deferred += 1
            break
        async with db.connection(pool) as conn:
            cur = await conn.execute(_CLAIM, {"user": user_id, "lease": timedelta(seconds=claim_lease_s(settings))})
            row = await cur.fetchone()
        if row is None:
            break
        claim = EmailClaim(row["id"], row["user_id"], row["request_id"], row["attempts"], row["email"],
                           row["full_name"])
        await send_claimed(pool, mailer, settings, claim, source=source, report=report, slot_taken=True)
    return report


async def send_claimed(pool: AsyncConnectionPool, mailer: Mailer, settings: Settings, claim: EmailClaim, *,
                       source: str, report: DeliveryReport | None = None, slot_taken: bool = False) -> DeliveryReport:
    """Send one claimed welcome email and record the result (one statement): sent (a new one-time token, the
    user's older links dead) or failed (attempts, backoff, an event). No transaction is open during the SES
    call. Without a sending slot in time the claim is given back and the email waits for a later pass."""
    report = report if report is not None else DeliveryReport()
    if not slot_taken and mailer.rate is not None and not await mailer.rate.wait_for_slot(settings.email_rate_wait_s):
        async with db.connection(pool) as conn:
            await conn.execute("UPDATE email_outbox SET next_attempt_at = now(), claimed_by = NULL"
                               " WHERE id = %s AND status = 'pending'", (claim.outbox_id,))
        report.deferred += 1
        return report
    token = secrets.token_urlsafe(32)
    # In the fragment: a browser never sends it to a server, so no load balancer or access log keeps the link.
    link = f"{settings.set_password_url}#{urlencode({'token': token})}"
    try:
        with tracing.span("ses.send_email", kind="CLIENT", attributes={"request_id": claim.request_id}):
            async with asyncio.timeout(settings.email_send_timeout_s):  # (no extra task, unlike wait_for)
                message_id = await mailer.send_welcome_async(to=claim.email, full_name=claim.full_name,
                                                             set_password_link=link)
    except Exception as exc:
        attempts = claim.attempts + 1
        gave_up = attempts >= MAX_EMAIL_ATTEMPTS
        level = Level.ERROR if gave_up else Level.WARNING
        event = "email_failed" if gave_up else "email_retry"
        ids = {"user_id": str(claim.user_id), "request_id": claim.request_id}
        async with db.connection(pool) as conn:
            await conn.execute(_RECORD_FAILURE, {
                "id": claim.outbox_id, "attempts": attempts, "error": type(exc).__name__,
                "delay": _retry_delay(attempts), "status": "failed" if gave_up else "pending",
                **prepared(level, event, f"welcome email attempt {attempts} failed ({type(exc).__name__})"
                           + ("; giving up" if gave_up else "; will retry"),
                           {**ids, "attempts": attempts, "error": type(exc).__name__}, source=source)})
        log_event(level, event)
        report.failed += 1
        report.gave_up += int(gave_up)
        return report
    async with db.connection(pool) as conn:
        await conn.execute(_RECORD_SENT, {
            "id": claim.outbox_id, "user": claim.user_id, "hash": hash_token(token), "provider_id": message_id,
            "ttl": timedelta(hours=settings.set_password_ttl_hours)})
    report.sent += 1
    report.last_link = link
    return report


# One due row, claimed for the lease (a concurrent sender skips it), with the address it goes to.
_CLAIM = (
    "UPDATE email_outbox o SET next_attempt_at = now() + %(lease)s, claimed_by = NULL FROM users u"
    " WHERE u.id = o.user_id AND o.id = ("
    "  SELECT id FROM email_outbox WHERE status = 'pending' AND next_attempt_at <= now()"
    "  AND (%(user)s::uuid IS NULL OR user_id = %(user)s::uuid) ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
    " RETURNING o.id, o.user_id, o.request_id, o.attempts, u.email, u.full_name")

# Sent: the user's earlier links die, the new token's hash is stored (not for an account erased while the email
# was on its way: its link stays dead), the row is done. (The statement's snapshot does not see the token it
# inserts, so only the earlier ones are marked used.)
_RECORD_SENT = (
    "WITH used AS (UPDATE password_setup_tokens SET used_at = now() WHERE user_id = %(user)s AND used_at IS NULL),"
    " token AS (INSERT INTO password_setup_tokens (token_hash, user_id, expires_at)"
    "  SELECT %(hash)s, id, now() + %(ttl)s FROM users WHERE id = %(user)s AND erased_at IS NULL)"
    " UPDATE email_outbox SET status = 'sent', sent_at = now(), attempts = attempts + 1, provider_id = %(provider_id)s,"
    " last_error = NULL WHERE id = %(id)s")

# Failed: the backoff (or the end), and the WARNING/ERROR event, together.
_RECORD_FAILURE = (
    "WITH box AS (UPDATE email_outbox SET attempts = %(attempts)s, last_error = %(error)s,"
    "  next_attempt_at = now() + %(delay)s, status = %(status)s WHERE id = %(id)s)"
    " INSERT INTO system_health_logs (level, event, message, metadata, source)"
    " VALUES (%(ev_level)s, %(ev_event)s, %(ev_message)s, %(ev_metadata)s, %(ev_source)s)")
