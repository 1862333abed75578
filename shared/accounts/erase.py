"""Use case: erase a person (`POST /api/admin/users/{id}/erase`, admin, with a reason).

In one transaction, with the user row locked:
  * the account keeps its id, role and times; its address becomes a placeholder derived from the id
    (`erased-<id>@erased.invalid`: unique, undeliverable), its name and phone go, its password hash goes
    (sign-in impossible), `disabled_at`, `tokens_valid_after` (now: every token issued before is refused by the
    token check, on every instance) and `erased_at` are set;
  * its set-password links are deleted (a link then answers 404) and its unsent welcome email is cancelled;
  * every creation request of the person (made the account, or asked for the same address) is redacted like the
    retention pass does (shared/core/personal_data.py); one still queued or running is failed first
    (`error_code` `erased`): its data is gone, so it can never create the account again;
  * the email cells of bulk uploads that name the address (rejected rows, duplicates) are removed;
  * health events about the person (its user id or one of its request ids) lose anything shaped like an
    address, and any event still holding the address itself is redacted too;
  * one audit row `user_erased`: the user id, the reason (an address, name or phone of the person typed into it
    is masked) and counts; never the address, name or phone.
Then Redis: the person's creation-quota counter (keyed by a hash of the account id) and sign-in counter (an
HMAC of the address) are deleted; BullMQ jobs hold request ids only. A Redis failure there leaves a WARNING
(the counters expire by themselves within their windows: 60 s and SIGN_IN_WINDOW_S).

Erasing an erased account again is a 200 that changes nothing and writes no second audit row.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field

from shared.accounts.signin_throttle import _digest as sign_in_key
from shared.bootstrap import Deps
from shared.core import db
from shared.core.audit import record_audit
from shared.core.errors import NotFound
from shared.core.health import Level, record, record_detached, scrub
from shared.core.identity import normalize_email
from shared.core.personal_data import (
    EMAIL_SHAPED,
    EVENT_HOLDS_PERSONAL_DATA,
    PERSONAL_KEYS,
    REDACTED_EVENT,
    REDACTED_REQUEST,
    placeholder_email,
    redacted_cells,
)


class EraseCommand(BaseModel):
    """Why the person is erased (kept in the audit row, with the person's own data masked)."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(min_length=3, max_length=500)]


_LOCK_USER = ("SELECT id, email, email_normalized, full_name, phone, erased_at FROM users WHERE id = %s"
              " FOR UPDATE")
_LOCK_REQUESTS = ("SELECT id, email, full_name, phone FROM creation_requests"
                  " WHERE user_id = %(id)s OR email_normalized = %(norm)s ORDER BY id FOR UPDATE")
_REQUESTS = sql.SQL(
    "UPDATE creation_requests SET {redacted},"
    " status = CASE WHEN status IN ('queued', 'processing') THEN 'failed' ELSE status END,"
    " error_code = CASE WHEN status IN ('queued', 'processing') THEN 'erased' ELSE error_code END,"
    " error = CASE WHEN status IN ('queued', 'processing') THEN 'the person was erased' ELSE error END,"
    " updated_at = now() WHERE id = ANY(%(ids)s)").format(redacted=REDACTED_REQUEST)
_USER = ("UPDATE users SET email = %(placeholder)s, email_normalized = %(placeholder)s, full_name = '',"
         " phone = NULL, password_hash = NULL, disabled_at = coalesce(disabled_at, now()),"
         " tokens_valid_after = now(), erased_at = now() WHERE id = %(id)s RETURNING erased_at")
_LINKS = "DELETE FROM password_setup_tokens WHERE user_id = %(id)s"
_OUTBOX = ("UPDATE email_outbox SET status = CASE WHEN status = 'pending' THEN 'failed' ELSE status END,"
           " last_error = CASE WHEN status = 'pending' THEN 'erased' ELSE last_error END, provider_id = NULL,"
           " pii_redacted_at = now() WHERE user_id = %(id)s")
# The batches with email cells left (older ones were redacted by the retention pass).
_BATCH_CELLS = ("SELECT id, rejected, duplicates FROM bulk_batches WHERE pii_redacted_at IS NULL"
                " AND (jsonb_array_length(rejected) > 0 OR jsonb_array_length(duplicates) > 0)")
_BATCH_KEEP = sql.SQL("NOT (e->>'email' = ANY(%(cells)s))")
_BATCH = sql.SQL("UPDATE bulk_batches SET rejected = {rejected}, duplicates = {duplicates}"
                 " WHERE id = ANY(%(ids)s)").format(rejected=redacted_cells("rejected", _BATCH_KEEP),
                                                    duplicates=redacted_cells("duplicates", _BATCH_KEEP))
_NAMES_ADDRESS = sql.SQL("strpos(lower(message || metadata::text), %(norm)s) > 0")
_EVENTS = sql.SQL(
    "UPDATE system_health_logs SET {redacted}"
    " WHERE (metadata->>'user_id' = %(id)s OR metadata->>'request_id' = ANY(%(requests)s) OR {names})"
    " AND ({holds} OR {names})").format(redacted=REDACTED_EVENT, names=_NAMES_ADDRESS,
                                        holds=EVENT_HOLDS_PERSONAL_DATA)


async def erase_user(deps: Deps, user_id: str, command: EraseCommand, *, actor: str) -> dict[str, Any]:
    """Remove the person's data everywhere; see the module docstring. 404 for an unknown id."""
    try:
        uid = uuid.UUID(user_id)
    except ValueError:
        raise NotFound("no such user") from None
    async with db.connection(deps.pool) as conn, conn.transaction():
        cur = await conn.execute(_LOCK_USER, (uid,))
        user = await cur.fetchone()
        if user is None:
            raise NotFound("no such user")
        if user["erased_at"] is not None:
            return {"erased": True, "user_id": str(uid), "erased_at": user["erased_at"].isoformat(),
                    "already": True}
        params: dict[str, Any] = {"id": uid, "norm": user["email_normalized"]}
        cur = await conn.execute(_LOCK_REQUESTS, params)
        requests = await cur.fetchall()
        personal = {user["email"], user["full_name"], user["phone"]}
        personal |= {value for r in requests for value in (r["email"], r["full_name"], r["phone"])}
        personal = {p for p in personal if p}
        params |= {"ids": [r["id"] for r in requests], "placeholder": placeholder_email(str(uid)),
                   "shape": EMAIL_SHAPED, "keys": PERSONAL_KEYS}
        await conn.execute(_REQUESTS, params)
        cur = await conn.execute(_USER, params)
        erased_at = (await cur.fetchone() or {}).get("erased_at")
        links = (await conn.execute(_LINKS, params)).rowcount
        await conn.execute(_OUTBOX, params)
        batches = await _erase_cells(conn, user["email_normalized"],
                                     {user["email"], *(r["email"] for r in requests)})
        params["requests"] = params["ids"]
        params["id"] = str(uid)
        events = (await conn.execute(_EVENTS, params)).rowcount
        facts = {"user_id": str(uid), "requests_redacted": len(requests), "links_deleted": max(0, links),
                 "batches_redacted": batches, "events_redacted": max(0, events)}
        await record_audit(conn, actor=actor, action="user_erased", reason=_masked(command.reason, personal),
                           before=None, after=facts, target=str(uid))
        await record(conn, Level.INFO, "user_erased", "a person's data was erased on an admin's request",
                     {**facts, "by": actor}, source=deps.source)
    await _forget_counters(deps, str(uid), user["email_normalized"])
    return {"erased": True, "user_id": str(uid), "erased_at": erased_at.isoformat() if erased_at else None,
            "already": False}


async def _erase_cells(conn: Any, norm: str, addresses: set[str]) -> int:
    """Remove the email cells of bulk uploads naming the address (as sent, or the same once normalised)."""
    cur = await conn.execute(_BATCH_CELLS)
    cells: set[str] = set()
    ids: list[str] = []
    for batch in await cur.fetchall():
        found = {str(item["email"]) for item in (*batch["rejected"], *batch["duplicates"])
                 if item.get("email") and (item["email"] in addresses or normalize_email(str(item["email"])) == norm)}
        if found:
            cells |= found
            ids.append(batch["id"])
    if ids:
        await conn.execute(_BATCH, {"ids": ids, "cells": sorted(cells)})
    return len(ids)


def _masked(reason: str, personal: set[str]) -> str:
    """The reason as typed, without the person's own address, name or phone, nor anything address-shaped."""
    for value in sorted(personal, key=len, reverse=True):
        reason = re.sub(re.escape(value), "[erased]", reason, flags=re.IGNORECASE)
    return str(scrub(reason))


async def _forget_counters(deps: Deps, user_id: str, email_normalized: str) -> None:
    """Delete the Redis counters keyed by the person (hashes of the account id and of the address)."""
    keys = [deps.quota.key(user_id), sign_in_key(deps, "account", email_normalized)]
    try:
        await deps.queue.client.delete(*keys)
    except Exception as exc:
        await record_detached(deps.pool, Level.WARNING, "erase_counters_kept",
                              f"the erased person's Redis counters could not be deleted ({type(exc).__name__});"
                              " they expire with their windows", {"user_id": user_id, "error": type(exc).__name__},
                              source=deps.source)
