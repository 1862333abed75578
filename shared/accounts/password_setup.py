"""Use case: the holder of a welcome link chooses the account's password.

The link's token is looked up by its SHA-256 (only the hash is stored). It works once and for
SET_PASSWORD_TTL_HOURS (72 h); the database's clock decides expiry. Order: the token (404 unknown, 410 used or
expired), then the password's strength (422), then the Argon2id hash (outside any transaction: 150 ms), then one
transaction that locks the token row, checks it again (two tabs racing: the second gets 410), stores the hash
and marks every outstanding token of the account used, with its health event. A disabled (or erased) account
cannot set a password (410, as a used link). A password that replaces another one ends every older session of
the account (`users.tokens_valid_after`, shared/core/sessions.py).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from shared.accounts.passwords import hash_password, weakness
from shared.bootstrap import Deps
from shared.core import db
from shared.core.errors import DomainError, InvalidInput, NotFound
from shared.core.health import Level, record, record_detached
from shared.creation.outbox import hash_token


class LinkGone(DomainError):
    """The link was used already (or replaced by a newer one), or it expired."""

    status, code = 410, "link_gone"


class SetPasswordCommand(BaseModel):
    """What the set-password page sends."""

    model_config = ConfigDict(extra="forbid")

    token: Annotated[str, Field(min_length=1, max_length=200)]
    password: Annotated[str, Field(min_length=1, max_length=4096)]


_LOOKUP = ("SELECT t.user_id, t.used_at, t.expires_at <= now() AS expired, u.email, u.full_name, u.request_id,"
           " u.disabled_at IS NOT NULL OR u.erased_at IS NOT NULL AS blocked"
           " FROM password_setup_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = %s")
# Under the user's row lock: refused for a disabled or erased account; a password replacing another one ends
# every older session of the account (the first password ends nothing: no session can exist before it).
_STORE = ("UPDATE users SET password_hash = %(hash)s, password_set_at = now(),"
          " tokens_valid_after = CASE WHEN password_hash IS NOT NULL THEN clock_timestamp()"
          " ELSE tokens_valid_after END"
          " WHERE id = %(id)s AND disabled_at IS NULL AND erased_at IS NULL"
          " RETURNING tokens_valid_after IS NOT NULL AND tokens_valid_after >= now() AS sessions_ended")

GONE_MESSAGE = "this link was used already or has expired: ask for a new welcome email"


async def set_password(deps: Deps, command: SetPasswordCommand) -> None:
    """Store the password of the link's account; see the module docstring for the answers."""
    token_hash = hash_token(command.token)
    async with db.connection(deps.pool) as conn:
        cur = await conn.execute(_LOOKUP, (token_hash,))
        found = await cur.fetchone()
    if found is None:
        raise NotFound("this link is not valid")
    ids = {"user_id": str(found["user_id"]), "request_id": found["request_id"]}
    if found["used_at"] is not None or found["expired"] or found["blocked"]:
        reason = "disabled" if found["blocked"] else "expired" if found["used_at"] is None else "used"
        await record_detached(deps.pool, Level.INFO, "password_link_refused",
                              f"a set-password link was refused ({reason})", {**ids, "reason": reason},
                              source=deps.source)
        raise LinkGone(GONE_MESSAGE)
    problem = await asyncio.to_thread(weakness, command.password, email=found["email"],
                                      full_name=found["full_name"])
    if problem is not None:
        raise InvalidInput("choose a stronger password", details=[problem])
    password_hash = await hash_password(command.password)

    async with db.connection(deps.pool) as conn, conn.transaction():
        cur = await conn.execute(
            "SELECT used_at, expires_at <= now() AS expired FROM password_setup_tokens"
            " WHERE token_hash = %s FOR UPDATE", (token_hash,))
        locked = await cur.fetchone()
        if locked is None or locked["used_at"] is not None or locked["expired"]:
            raise LinkGone(GONE_MESSAGE)
        cur = await conn.execute(_STORE, {"hash": password_hash, "id": found["user_id"]})
        stored = await cur.fetchone()
        if stored is None:  # disabled (or erased) since the look-up
            raise LinkGone(GONE_MESSAGE)
        cur = await conn.execute(
            "UPDATE password_setup_tokens SET used_at = now() WHERE user_id = %s AND used_at IS NULL",
            (found["user_id"],))
        other_links = max(0, cur.rowcount - 1)
        await record(conn, Level.INFO, "password_set", "a password was set through a welcome link",
                     {**ids, "other_links_revoked": other_links, "sessions_ended": stored["sessions_ended"]},
                     source=deps.source)

