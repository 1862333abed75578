"""Use case: a sales manager asks for a user. Record the request, then queue it or do it now."""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from shared.bootstrap import Deps
from shared.core import db, health, tracing
from shared.core.auth import Principal, Role
from shared.core.errors import (
    CreationFailed,
    IdempotencyKeyReused,
    InvalidInput,
    NotFound,
    RateLimited,
    RequestInProgress,
    UserExists,
)
from shared.core.health import Level
from shared.creation.models import CreateUserCommand, TrafficMode, is_request_id
from shared.creation.outbox import claim_lease_s, deliver_pending, send_claimed
from shared.creation.provisioning import Outcome, provision

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the create function answers: status, JSON body and extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


_RECORD_REQUEST = """
WITH taken AS (SELECT EXISTS (SELECT 1 FROM users WHERE email_normalized = %(norm)s) AS user_exists),
ins AS (
    INSERT INTO creation_requests (id, actor, idempotency_key, body_hash, email, email_normalized, full_name,
                                   phone, product, mode, fallback, fallback_reason, trace_id, traceparent)
    SELECT %(id)s, %(actor)s, %(key)s, %(hash)s, %(email)s, %(norm)s, %(full_name)s, %(phone)s, %(product)s,
           %(mode)s, %(fallback)s, %(fallback_reason)s, %(trace_id)s, %(traceparent)s
    FROM taken WHERE NOT taken.user_exists
    ON CONFLICT (actor, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id),
ev AS (  -- a data-modifying CTE runs whether or not it is read
    INSERT INTO system_health_logs (level, event, message, metadata, source)
    SELECT %(ev_level)s, %(ev_event)s, %(ev_message)s, %(ev_metadata)s, %(ev_source)s FROM ins RETURNING 1)
SELECT (SELECT user_exists FROM taken) AS user_exists, (SELECT id FROM ins) AS inserted
"""


def new_request_id() -> str:
    """A job-id-safe request id: no ':' and never all digits (BullMQ's rules)."""
    return f"req_{uuid.uuid4().hex}"


def status_url(deps: Deps, request_id: str) -> str:
    """Where the caller polls a queued request."""
    return f"{deps.settings.public_base_url}/api/users/requests/{request_id}"


IDEMPOTENCY_KEY = re.compile(r"[!-~]([ -~]{0,253}[!-~])?")


def validate_idempotency_key(key: str | None) -> str | None:
    """1 to 255 printable ASCII characters (inner spaces allowed), or absent."""
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidInput("Idempotency-Key must be 1-255 printable ASCII characters",
                           details=[{"field": "Idempotency-Key", "message": "invalid"}])
    return key


async def create_user_request(deps: Deps, principal: Principal, command: CreateUserCommand,
                              idempotency_key: str | None) -> Answer:
    """Accept a creation request: 202 queued, or 201 created in the request (kill switch or fallback).

    Counted against the caller's quota first (429 and nothing written when over it); the count is given back
    when the request is not accepted after all (a replay, a conflict, an error).
    """
    charge = await deps.quota.charge(principal.subject)
    if not charge.allowed:
        raise RateLimited(f"more than {deps.quota.limit} creation requests in 60 s from this caller; "
                          f"retry in {charge.retry_after_s} s", retry_after_s=charge.retry_after_s)
    try:
        answer, accepted = await _accept(deps, principal, command, idempotency_key)
    except Exception:
        await deps.quota.refund(charge)
        raise
    if not accepted:
        await deps.quota.refund(charge)
    return answer


async def _accept(deps: Deps, principal: Principal, command: CreateUserCommand,
                  idempotency_key: str | None) -> tuple[Answer, bool]:
    """(the answer, whether a new request was accepted: False for a replay)."""
    mode = (await deps.mode_cache.current()).mode
    fallback_reason = await deps.fallback_reason() if mode is TrafficMode.ASYNC_QUEUE else None
    use_queue = mode is TrafficMode.ASYNC_QUEUE and fallback_reason is None

    request_id, replay = await _record_request(deps, principal, command, idempotency_key,
                                               queued=use_queue, fallback_reason=fallback_reason)
    if replay is not None:
        return await _replay(deps, replay), False

    if use_queue:
        try:
            # The request's trace context rides in the job (the row holds the same): no read-back by the consumer.
            await deps.queue.enqueue(request_id, traceparent=(tracing.current_ids() or (None, ""))[1])
        except Exception as exc:
            # The job may or may not have landed; provision() makes either case end in one user.
            fallback_reason = "redis_unavailable"
            await deps.breaker.failure(f"{fallback_reason}: {type(exc).__name__}")
            await _mark_fallback(deps, request_id, fallback_reason)
        else:
            return _queued_answer(deps, request_id), True

    # The new user's welcome email comes back claimed by this request (one statement fewer than a claim of its
    # own); the periodic pass takes it over only if this instance dies before recording the send.
    outcome = await provision(deps.pool, request_id, source=deps.source,
                              via="fallback" if fallback_reason else "sync", claim_email=True,
                              email_lease_s=claim_lease_s(deps.settings))
    return await _created_answer(deps, request_id, outcome, fallback=fallback_reason is not None), True


async def _record_request(deps: Deps, principal: Principal, command: CreateUserCommand,
                          idempotency_key: str | None, *, queued: bool,
                          fallback_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    """Insert the request row (committed before any 202). Returns (id, existing row if a replay)."""
    request_id = new_request_id()
    mode = TrafficMode.ASYNC_QUEUE if queued else TrafficMode.SYNC_DIRECT
    event = health.prepared(Level.INFO, "creation_requested",
                            "user creation request recorded" + (" and queued" if queued else ""),
                            {"request_id": request_id, "mode": mode.value, "fallback_reason": fallback_reason},
                            source=deps.source)
    trace_id, traceparent = tracing.current_ids() or (None, None)
    async with db.connection(deps.pool) as conn:
        try:
            # One statement, one round trip, atomic: the early user check, the row and its INFO event.
            cur = await conn.execute(_RECORD_REQUEST, {
                "id": request_id, "actor": principal.subject, "key": idempotency_key,
                "hash": command.body_hash(), "email": command.email, "norm": command.email_normalized,
                "full_name": command.full_name, "phone": command.phone, "product": command.product,
                "mode": mode.value, "fallback": fallback_reason is not None, "fallback_reason": fallback_reason,
                "trace_id": trace_id, "traceparent": traceparent, **event})
            row = await cur.fetchone()
        except pg_errors.UniqueViolation as exc:
            if exc.diag.constraint_name != "creation_requests_one_pending_per_email":
                raise
            # A concurrent twin with the same key can trip this index before the key's arbiter index.
            if idempotency_key is not None:
                replay = await _existing_for_key(conn, principal, idempotency_key, command, required=False)
                if replay[1] is not None:
                    return replay
            raise RequestInProgress("a creation request for this address is already in progress") from None
        if row is None or row["inserted"] is None:
            if idempotency_key is not None:
                replay = await _existing_for_key(conn, principal, idempotency_key, command,
                                                 required=not (row and row["user_exists"]))
                if replay[1] is not None:
                    return replay
            # Early answer only; the unique constraint on users is what really decides.
            raise UserExists("a user with this email address already exists")
    health.log_event(Level.INFO, "creation_requested")
    return request_id, None


async def _existing_for_key(conn: Any, principal: Principal, idempotency_key: str | None,
                            command: CreateUserCommand, *, required: bool = True) -> tuple[str, dict[str, Any] | None]:
    """The request already recorded under this caller's key; 422 if it was for another body."""
    cur = await conn.execute("SELECT * FROM creation_requests WHERE actor = %s AND idempotency_key = %s",
                             (principal.subject, idempotency_key))
    existing = await cur.fetchone()
    if existing is None:
        if required:  # the conflicting row vanished; never happens without deletes
            raise CreationFailed("could not record the request; try again")
        return "", None
    if existing["body_hash"] != command.body_hash():
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used with a different body",
            details=[{"field": "Idempotency-Key", "message": "reused with another body"}],
        )
    return existing["id"], existing


async def _mark_fallback(deps: Deps, request_id: str, reason: str) -> None:
    async with db.connection(deps.pool) as conn:
        await conn.execute(
            "UPDATE creation_requests SET mode = 'sync_direct', fallback = true, fallback_reason = %s,"
            " updated_at = now() WHERE id = %s AND status = 'queued'",
            (reason, request_id),
        )


async def _replay(deps: Deps, row: dict[str, Any]) -> Answer:
    """The first answer again for a repeated Idempotency-Key with the same body."""
    if row["mode"] == TrafficMode.ASYNC_QUEUE.value:
        return _queued_answer(deps, row["id"])
    outcome = await provision(deps.pool, row["id"], source=deps.source,
                              via="fallback" if row["fallback"] else "sync")
    return await _created_answer(deps, row["id"], outcome, fallback=row["fallback"])


def _queued_answer(deps: Deps, request_id: str) -> Answer:
    url = status_url(deps, request_id)
    return Answer(202, {"request_id": request_id, "status": "queued", "mode": TrafficMode.ASYNC_QUEUE.value,
                        "status_url": url}, {"Location": url})


async def _created_answer(deps: Deps, request_id: str, outcome: Outcome, *, fallback: bool) -> Answer:
    if outcome.status != "created" or outcome.user is None:
        if outcome.error_code == "user_exists":
            raise UserExists(outcome.error or "a user with this email address already exists")
        raise CreationFailed(outcome.error or "the user could not be created")
    if not outcome.already_done:  # whoever created the user sends the email (a replay may win the lock)
        try:
            if outcome.email is not None:
                await send_claimed(deps.pool, deps.mailer, deps.settings, outcome.email, source=deps.source)
            else:
                await deliver_pending(deps.pool, deps.mailer, deps.settings, source=deps.source,
                                      user_id=outcome.user["id"], limit=1)
        except Exception:
            # The user exists and the email stays in the outbox for a later delivery pass.
            log.exception("welcome email delivery pass failed for request %s", request_id)
    return Answer(201, {"request_id": request_id, "status": "created", "mode": TrafficMode.SYNC_DIRECT.value,
                        "fallback": fallback, "user": outcome.user})


async def request_status(deps: Deps, principal: Principal, request_id: str) -> dict[str, Any]:
    """The public state of a creation request: a sales manager sees only the requests it made (another
    caller's is a 404, as if it did not exist); an admin sees every one."""
    if not is_request_id(request_id):
        raise NotFound("no such creation request")
    # Admins see all; anyone else only its own (the NULL skips the condition).
    actor = None if principal.role is Role.ADMIN else principal.subject
    try:
        async with db.connection(deps.pool) as conn:
            cur = await conn.execute(
                "SELECT id, status, mode, fallback, attempts, user_id, error_code, error, created_at,"
                " updated_at FROM creation_requests WHERE id = %s AND (%s::text IS NULL OR actor = %s)",
                (request_id, actor, actor))
            row = await cur.fetchone()
    except psycopg.DataError:
        row = None
    if row is None:
        raise NotFound("no such creation request")
    body: dict[str, Any] = {
        "request_id": row["id"], "status": row["status"], "mode": row["mode"], "fallback": row["fallback"],
        "attempts": row["attempts"], "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }
    if row["user_id"] is not None:
        body["user_id"] = str(row["user_id"])
    if row["error"] is not None:
        body["error"] = row["error"]
        body["error_code"] = row["error_code"]
    return body
