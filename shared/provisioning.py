"""The one code path that turns a recorded creation request into a user.

Sync mode, the automatic fallback and the queue consumer all call `provision()`. It locks the request row,
so two callers for one request (a fallback racing a consumer that got the job after all, a stalled job
delivered twice, a crash and a retry) serialise, and the second one finds the work done: at most one user
per request, and the unique normalised email makes it at most one user per address.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from shared import db, tracing
from shared.audit import record_audit
from shared.errors import NotFound
from shared.health import Level, record

USER_EXISTS_MESSAGE = "a user with this email address already exists"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The state of a request after `provision()`."""

    request_id: str
    status: str  # created | failed
    user: dict[str, Any] | None = None
    error_code: str | None = None
    error: str | None = None
    already_done: bool = False


async def load_user(conn: AsyncConnection[Any], user_id: Any) -> dict[str, Any] | None:
    """The public view of a user."""
    cur = await conn.execute("SELECT id, email, full_name, created_at FROM users WHERE id = %s", (user_id,))
    row = await cur.fetchone()
    return user_view(row) if row else None


def user_view(row: dict[str, Any]) -> dict[str, Any]:
    """JSON shape of a user in answers."""
    return {"id": str(row["id"]), "email": row["email"], "full_name": row["full_name"],
            "created_at": row["created_at"].isoformat()}


async def provision(pool: AsyncConnectionPool, request_id: str, *, source: str,
                    via: str) -> Outcome:
    """Create the user of `request_id` (idempotent). `via` says who did it: sync, fallback or consumer."""
    with tracing.span("db.provision", attributes={"request_id": request_id, "via": via}) as span:
        outcome = await _provision(pool, request_id, source=source, via=via)
        if span is not None:
            span.set_attribute("outcome", outcome.status + (" (already done)" if outcome.already_done else ""))
    return outcome


async def _provision(pool: AsyncConnectionPool, request_id: str, *, source: str, via: str) -> Outcome:
    async with db.connection(pool) as conn, conn.transaction():
        cur = await conn.execute("SELECT * FROM creation_requests WHERE id = %s FOR UPDATE", (request_id,))
        req = await cur.fetchone()
        if req is None:
            raise NotFound(f"no creation request {request_id}")
        if req["status"] == "created":
            return Outcome(request_id, "created", await load_user(conn, req["user_id"]), already_done=True)
        if req["status"] == "failed":
            return Outcome(request_id, "failed", None, req["error_code"], req["error"], already_done=True)

        cur = await conn.execute(
            "INSERT INTO users (id, email, email_normalized, full_name, phone, product, request_id, role)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (email_normalized) DO NOTHING"
            " RETURNING id, email, full_name, created_at",
            (uuid.uuid4(), req["email"], req["email_normalized"], req["full_name"], req["phone"],
             req["product"], request_id, req["role"]),
        )
        user = await cur.fetchone()
        ids = {"request_id": request_id, "mode": req["mode"], "via": via}
        if user is None:
            await conn.execute(
                "UPDATE creation_requests SET status = 'failed', error_code = 'user_exists', error = %s,"
                " attempts = attempts + 1, updated_at = now() WHERE id = %s",
                (USER_EXISTS_MESSAGE, request_id),
            )
            await record(conn, Level.ERROR, "creation_failed",
                         "user creation failed for good: the address is already used", 
                         {**ids, "error_code": "user_exists"}, source=source)
            return Outcome(request_id, "failed", None, "user_exists", USER_EXISTS_MESSAGE)

        await conn.execute("INSERT INTO email_outbox (user_id, request_id) VALUES (%s, %s)",
                           (user["id"], request_id))
        await conn.execute(
            "UPDATE creation_requests SET status = 'created', user_id = %s, attempts = attempts + 1,"
            " error_code = NULL, error = NULL, updated_at = now() WHERE id = %s",
            (user["id"], request_id),
        )
        await record(conn, Level.INFO, "user_created", f"user created ({via})",
                     {**ids, "user_id": str(user["id"]), "fallback": req["fallback"]}, source=source)
        if req["role"] != "member":  # a staff account is an admin change: audited with the user it makes
            await record_audit(conn, actor=req["actor"], action="account_created", reason=None, before=None,
                               after={"user_id": str(user["id"]), "role": req["role"], "request_id": request_id},
                               target=str(user["id"]))
    return Outcome(request_id, "created", user_view(user))
