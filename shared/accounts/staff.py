"""Use cases: staff accounts (admin, sales_manager, viewer) and the welcome email sent again.

A staff account is made exactly like every other user: a creation request (with the account's role) is
recorded, `provision()` makes the user (and, for a staff role, its audit row) and the outbox sends the same
welcome email. `invoke account create` and `POST /api/admin/accounts` both call `create_account()`.

Sending the welcome again (`POST /api/admin/accounts/{id}/welcome`) kills every outstanding link of the
account at once, in the transaction that queues the new email: a link that went to the wrong inbox is dead even
if the new email is delayed.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from psycopg import errors as pg_errors

from shared.bootstrap import Deps
from shared.core import db
from shared.core.audit import record_audit
from shared.core.errors import CreationFailed, NotFound, RequestInProgress, UserExists
from shared.core.health import Level, record
from shared.creation.creation import new_request_id
from shared.creation.models import CreateUserCommand, TrafficMode
from shared.creation.outbox import DeliveryReport, deliver_pending
from shared.creation.provisioning import provision

log = logging.getLogger(__name__)

StaffRole = Literal["admin", "sales_manager", "viewer"]


class CreateAccountCommand(CreateUserCommand):
    """A staff account: the fields of a user, and its role."""

    role: StaffRole


@dataclass(frozen=True, slots=True)
class AccountCreated:
    """The new account, and whether its welcome email went out now (else the outbox retries it)."""

    account: dict[str, Any]
    email_sent: bool
    delivery: DeliveryReport


_RECORD = """
WITH taken AS (SELECT EXISTS (SELECT 1 FROM users WHERE email_normalized = %(norm)s) AS user_exists),
ins AS (
    INSERT INTO creation_requests (id, actor, body_hash, email, email_normalized, full_name, phone, product,
                                   mode, role)
    SELECT %(id)s, %(actor)s, %(hash)s, %(email)s, %(norm)s, %(full_name)s, %(phone)s, %(product)s, %(mode)s,
           %(role)s
    FROM taken WHERE NOT taken.user_exists
    RETURNING id)
SELECT (SELECT user_exists FROM taken) AS user_exists, (SELECT id FROM ins) AS inserted
"""

_ACCOUNT_BY_ID = ("SELECT id, email, full_name, role, created_at, password_set_at, last_sign_in_at, disabled_at"
                  " FROM users WHERE id = %s")
_STAFF_ACCOUNTS = ("SELECT id, email, full_name, role, created_at, password_set_at, last_sign_in_at, disabled_at"
                   " FROM users WHERE role <> 'member' ORDER BY created_at DESC, id LIMIT %s")


def account_view(row: dict[str, Any]) -> dict[str, Any]:
    """JSON shape of an account in answers (never its password hash)."""
    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {"id": str(row["id"]), "email": row["email"], "full_name": row["full_name"], "role": row["role"],
            "created_at": iso(row["created_at"]), "password_set_at": iso(row["password_set_at"]),
            "last_sign_in_at": iso(row["last_sign_in_at"]), "disabled": row["disabled_at"] is not None,
            "disabled_at": iso(row["disabled_at"])}


async def create_account(deps: Deps, command: CreateAccountCommand, *, actor: str) -> AccountCreated:
    """Make a staff account and send its welcome email; 409 when the address has a user already."""
    request_id = new_request_id()
    async with db.connection(deps.pool) as conn:
        try:
            async with conn.transaction():
                cur = await conn.execute(_RECORD, {
                    "id": request_id, "actor": actor, "hash": command.body_hash(), "email": command.email,
                    "norm": command.email_normalized, "full_name": command.full_name, "phone": command.phone,
                    "product": command.product, "mode": TrafficMode.SYNC_DIRECT.value, "role": command.role})
                row = await cur.fetchone()
                if row is None or row["inserted"] is None:
                    raise UserExists("a user with this email address already exists")
                await record(conn, Level.INFO, "creation_requested", f"staff account requested ({command.role})",
                             {"request_id": request_id, "mode": TrafficMode.SYNC_DIRECT.value,
                              "role": command.role, "by": actor}, source=deps.source)
        except pg_errors.UniqueViolation:
            raise RequestInProgress("a creation request for this address is already in progress") from None
    outcome = await provision(deps.pool, request_id, source=deps.source, via="account")
    if outcome.status != "created" or outcome.user is None:
        if outcome.error_code == "user_exists":
            raise UserExists(outcome.error or "a user with this email address already exists")
        raise CreationFailed(outcome.error or "the account could not be created")
    report = await _send_welcome(deps, outcome.user["id"])
    async with db.connection(deps.pool) as conn:
        cur = await conn.execute(_ACCOUNT_BY_ID, (outcome.user["id"],))
        account = await cur.fetchone()
    if account is None:  # never: the user was committed above and users are not deleted
        raise CreationFailed("the account vanished")
    return AccountCreated(account_view(account), report.sent > 0, report)


async def _send_welcome(deps: Deps, user_id: Any) -> DeliveryReport:
    try:
        return await deliver_pending(deps.pool, deps.mailer, deps.settings, source=deps.source, user_id=user_id,
                                     limit=1)
    except Exception:
        # The email stays in the outbox; the consumer's delivery pass sends it later.
        log.exception("welcome email delivery pass failed for account %s", user_id)
        return DeliveryReport()


def _account_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound("no such account") from None


async def resend_welcome(deps: Deps, account_id: str, *, actor: str) -> dict[str, Any]:
    """Kill the account's outstanding links, queue a new welcome email and try to send it now."""
    user_id = _account_id(account_id)
    async with db.connection(deps.pool) as conn, conn.transaction():
        # An erased account has no address to write to (shared/accounts/erase.py): unknown here.
        cur = await conn.execute("SELECT id, request_id, role FROM users WHERE id = %s AND erased_at IS NULL"
                                 " FOR UPDATE", (user_id,))
        user = await cur.fetchone()
        if user is None:
            raise NotFound("no such account")
        cur = await conn.execute(
            "UPDATE password_setup_tokens SET used_at = now() WHERE user_id = %s AND used_at IS NULL", (user_id,))
        revoked = cur.rowcount
        await conn.execute(
            "INSERT INTO email_outbox (user_id, request_id) VALUES (%s, %s) ON CONFLICT (user_id, kind) DO UPDATE"
            " SET status = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL, sent_at = NULL",
            (user_id, user["request_id"]))
        facts = {"user_id": str(user_id), "role": user["role"], "links_revoked": revoked}
        await record_audit(conn, actor=actor, action="welcome_resent", reason=None, before=None, after=facts,
                           target=str(user_id))
        await record(conn, Level.INFO, "welcome_resent", "the welcome email is sent again; older links are dead",
                     {**facts, "by": actor}, source=deps.source)
    report = await _send_welcome(deps, user_id)
    return {"account_id": str(user_id), "email": "sent" if report.sent else "pending", "links_revoked": revoked}


async def list_accounts(deps: Deps, *, limit: int = 200) -> dict[str, Any]:
    """Staff accounts, newest first (members are users: the requests search finds them)."""
    async with db.connection(deps.pool) as conn:
        cur = await conn.execute(_STAFF_ACCOUNTS, (limit,))
        rows = await cur.fetchall()
    return {"items": [account_view(r) for r in rows]}
