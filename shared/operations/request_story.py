"""The story of one creation request, in time order, from what the system recorded (not from the 7-day health
log): the request row, each consumer attempt, each retry, the user, the welcome email and the password.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from shared.bootstrap import Deps
from shared.core import db
from shared.core.errors import NotFound
from shared.operations.request_search import REQUEST_COLUMNS, request_view

REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
FALLBACK_WHY = {"redis_unavailable": "Redis was unavailable", "no_consumer": "no consumer was alive"}


def _step(at: datetime | None, kind: str, detail: dict[str, Any]) -> dict[str, Any] | None:
    return {"at": at.isoformat(), "kind": kind, "detail": detail} if at else None


async def _password_set_column(conn: AsyncConnection[Any]) -> bool:
    """Whether `users.password_set_at` exists (the accounts migration adds it; older schemas lack it)."""
    cur = await conn.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
                             " AND table_name = 'users' AND column_name = 'password_set_at'")
    return await cur.fetchone() is not None


async def request_story(deps: Deps, request_id: str) -> dict[str, Any]:
    """`{request, trace_id, timeline: [{at, kind, detail}]}`; 404 for an unknown id."""
    if not REQUEST_ID.fullmatch(request_id):
        raise NotFound("no such creation request")
    async with db.connection(deps.pool) as conn:
        # nosec B608: REQUEST_COLUMNS is a module constant, the id a bound parameter
        cur = await conn.execute(f"SELECT {REQUEST_COLUMNS} FROM creation_requests WHERE id = %s",  # noqa: S608 # nosec B608
                                 (request_id,))
        req = await cur.fetchone()
        if req is None:
            raise NotFound("no such creation request")
        cur = await conn.execute("SELECT attempt, consumer, started_at, finished_at, outcome, error"
                                 " FROM creation_attempts WHERE request_id = %s ORDER BY id", (request_id,))
        attempts = await cur.fetchall()
        cur = await conn.execute("SELECT at, actor, reason, bulk FROM creation_retries WHERE request_id = %s"
                                 " ORDER BY id", (request_id,))
        retries = await cur.fetchall()
        user = email = None
        password_at: datetime | None = None
        if req["user_id"] is not None:
            cur = await conn.execute("SELECT id, created_at FROM users WHERE id = %s", (req["user_id"],))
            user = await cur.fetchone()
            cur = await conn.execute("SELECT status, attempts, last_error, created_at, sent_at, next_attempt_at"
                                     " FROM email_outbox WHERE user_id = %s AND kind = 'welcome'", (req["user_id"],))
            email = await cur.fetchone()
            cur = await conn.execute("SELECT min(used_at) AS at FROM password_setup_tokens WHERE user_id = %s",
                                     (req["user_id"],))
            password_at = ((await cur.fetchone()) or {}).get("at")
            if password_at is None and await _password_set_column(conn):
                cur = await conn.execute("SELECT password_set_at AS at FROM users WHERE id = %s", (req["user_id"],))
                password_at = ((await cur.fetchone()) or {}).get("at")
    return {"request": request_view(req), "trace_id": req["trace_id"],
            "timeline": _timeline(req, attempts, retries, user, email, password_at)}


def _timeline(req: dict[str, Any], attempts: list[dict[str, Any]], retries: list[dict[str, Any]],
              user: dict[str, Any] | None, email: dict[str, Any] | None,
              password_at: datetime | None) -> list[dict[str, Any]]:
    steps: list[dict[str, Any] | None] = [
        _step(req["created_at"], "recorded", {"actor": req["actor"], "mode": req["mode"]})]
    if req["fallback"]:
        reason = req["fallback_reason"] or "unknown"
        steps.append(_step(req["created_at"], "fallback",
                           {"reason": reason, "why": FALLBACK_WHY.get(reason, reason), "mode": "sync_direct"}))
    elif req["mode"] == "sync_direct" and not attempts:
        steps.append(_step(req["created_at"], "sync", {"why": "the kill switch was on (sync_direct)"}))
    else:
        steps.append(_step(req["created_at"], "queued", {"queue": "user-creation"}))
    for a in attempts:
        duration = (a["finished_at"] - a["started_at"]).total_seconds() * 1000 if a["finished_at"] else None
        steps.append(_step(a["started_at"], "attempt",
                           {"attempt": a["attempt"], "consumer": a["consumer"], "outcome": a["outcome"] or "running",
                            "duration_ms": round(duration, 1) if duration is not None else None,
                            "error": a["error"]}))
    for r in retries:
        steps.append(_step(r["at"], "retried", {"by": r["actor"], "reason": r["reason"], "bulk": r["bulk"]}))
    if user is not None:
        steps.append(_step(user["created_at"], "user_created", {"user_id": str(user["id"])}))
    if req["status"] == "failed":
        steps.append(_step(req["updated_at"], "failed", {"error_code": req["error_code"], "error": req["error"]}))
    if email is not None:
        if email["status"] == "sent":
            steps.append(_step(email["sent_at"], "email_sent", {"attempts": email["attempts"]}))
        elif email["status"] == "failed":
            steps.append(_step(email["next_attempt_at"], "email_failed",
                               {"attempts": email["attempts"], "error": email["last_error"]}))
        else:
            steps.append(_step(email["created_at"], "email_pending",
                               {"attempts": email["attempts"], "error": email["last_error"]}))
    steps.append(_step(password_at, "password_set", {}))
    order = {"recorded": 0, "fallback": 1, "sync": 1, "queued": 1}
    return sorted((s for s in steps if s), key=lambda s: (datetime.fromisoformat(s["at"]), order.get(s["kind"], 2)))
