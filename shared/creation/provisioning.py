"""The one code path that turns a recorded creation request into a user.

Sync mode, the automatic fallback and the queue consumer all call `provision()`. It locks the request row,
so two callers for one request (a fallback racing a consumer that got the job after all, a stalled job
delivered twice, a crash and a retry) serialise, and the second one finds the work done: at most one user
per request, and the unique normalised email makes it at most one user per address. The whole creation (lock,
user, outbox row, request state, events, audit row) is one statement, `provision_request()` (migration 0011):
one round trip, and no transaction is ever left open between round trips.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from shared.core import db, tracing
from shared.core.errors import NotFound
from shared.core.health import Level, log_event, prepared
from shared.creation.outbox import EmailClaim

USER_EXISTS_MESSAGE = "a user with this email address already exists"
USER_EXISTS_EVENT = "user creation failed for good: the address is already used"  # its ERROR event's text


@dataclass(frozen=True, slots=True)
class Outcome:
    """The state of a request after `provision()`."""

    request_id: str
    status: str  # created | failed
    user: dict[str, Any] | None = None
    error_code: str | None = None
    error: str | None = None
    already_done: bool = False
    # The new user's welcome email, claimed for the caller (only when asked: `provision(claim_email=True)`).
    email: EmailClaim | None = None


async def load_user(conn: AsyncConnection[Any], user_id: Any) -> dict[str, Any] | None:
    """The public view of a user."""
    cur = await conn.execute("SELECT id, email, full_name, created_at FROM users WHERE id = %s", (user_id,))
    row = await cur.fetchone()
    return user_view(row) if row else None


def user_view(row: dict[str, Any]) -> dict[str, Any]:
    """JSON shape of a user in answers."""
    return {"id": str(row["id"]), "email": row["email"], "full_name": row["full_name"],
            "created_at": row["created_at"].isoformat()}


async def provision(pool: AsyncConnectionPool, request_id: str, *, source: str, via: str,
                    claim_email: bool = False, attempt_id: int | None = None,
                    email_lease_s: float = 0.0) -> Outcome:
    """Create the user of `request_id` (idempotent). `via` says who did it: sync, fallback or consumer.

    One statement, one round trip (`provision_request()`, migration 0011). With `claim_email` the new user's
    outbox row comes back already claimed for `email_lease_s` (`Outcome.email`): the caller sends it with
    `outbox.send_claimed` and the periodic pass leaves it alone meanwhile. `attempt_id` (the consumer's
    `creation_attempts` row) is finished in the same transaction.
    """
    with tracing.span("db.provision", attributes={"request_id": request_id, "via": via}) as span:
        outcome = await _provision(pool, request_id, source=source, via=via, claim_email=claim_email,
                                   attempt_id=attempt_id, email_lease_s=email_lease_s)
        if span is not None:
            span.set_attribute("outcome", outcome.status + (" (already done)" if outcome.already_done else ""))
    return outcome


async def _provision(pool: AsyncConnectionPool, request_id: str, *, source: str, via: str, claim_email: bool,
                     attempt_id: int | None, email_lease_s: float) -> Outcome:
    user_id = uuid.uuid4()
    # + mode and fallback, added by the function from the row (and for the ERROR event: the error code)
    created = prepared(Level.INFO, "user_created", f"user created ({via})",
                       {"request_id": request_id, "via": via, "user_id": str(user_id)}, source=source)
    async with db.connection(pool) as conn:
        cur = await conn.execute(_PROVISION, {
            "id": request_id, "user": user_id, "source": created["ev_source"],
            "created_message": created["ev_message"], "created_meta": created["ev_metadata"],
            "exists_message": USER_EXISTS_EVENT, "exists_error": USER_EXISTS_MESSAGE,
            "lease": timedelta(seconds=email_lease_s) if claim_email else None, "attempt": attempt_id})
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"no creation request {request_id}")
    claim = (EmailClaim(row["outbox_id"], row["user_id"], request_id, 0, row["email"], row["full_name"])
             if claim_email and row["outbox_id"] is not None else None)
    if row["already_done"]:  # (a redelivered job may come back with the email its earlier attempt claimed)
        user = user_view(row) if row["user_id"] is not None else None
        return Outcome(request_id, row["status"], user, row["error_code"], row["error"], already_done=True,
                       email=claim)
    if row["status"] == "failed":
        log_event(Level.ERROR, "creation_failed")
        return Outcome(request_id, "failed", None, row["error_code"], row["error"])
    log_event(Level.INFO, "user_created")
    return Outcome(request_id, "created", user_view(row), email=claim)


_PROVISION = (
    "SELECT status, already_done, error_code, error, user_id AS id, user_id, email, full_name, created_at,"
    " outbox_id FROM provision_request(%(id)s, %(user)s, %(source)s, %(created_message)s, %(created_meta)s,"
    " %(exists_message)s, %(exists_error)s, %(lease)s, %(attempt)s)")
