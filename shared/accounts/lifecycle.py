"""Use cases: an account's life after it exists: disable, enable, change role, end its sessions, sign out.

Rules (docs/sign-in-and-sessions.md):
- Each admin change carries a reason (3-500 characters), writes its audit row and a health event in the
  transaction that makes it, and ends what it should on every instance: disabling, a role change and
  `sessions/revoke` move `users.tokens_valid_after` (the role and disable through the trigger of
  infra/migrations/0014_sessions.sql), so every older token of the account is refused (401).
- A change to what the account already is (disable a disabled account, the same role) changes and writes
  nothing: 200 with the account as it is.
- Nobody disables or demotes their own account, and the last enabled admin account is never disabled or
  demoted (409 `conflict`): someone must be able to sign in and undo a mistake. The enabled admins' rows are
  locked in id order first, so two admins demoting each other at once cannot both succeed.
- Any account may be the target (staff or member); an unknown id is 404.
- Sign-out ends the caller's own token (its `jti` is kept until the token's expiry). A token that is not a
  session of ours (`invoke token`, another issuer) has nothing to end: 204 all the same, and it expires by itself.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from psycopg import AsyncConnection, sql
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.accounts.staff import account_view
from shared.bootstrap import Deps
from shared.core import db
from shared.core.audit import record_audit
from shared.core.auth import Principal
from shared.core.errors import DomainError, NotFound
from shared.core.health import Level, record

AccountRole = Literal["admin", "sales_manager", "viewer", "member"]


class AccountConflict(DomainError):
    """The change would lock everyone out (the caller's own account, the last admin)."""

    status, code = 409, "conflict"


class ReasonCommand(BaseModel):
    """Why (kept in the audit trail)."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(min_length=3, max_length=500)]

    @field_validator("reason")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if len(value.strip()) < 3:
            raise ValueError("give a reason of at least 3 characters")
        return value.strip()


class ChangeRoleCommand(ReasonCommand):
    """The new role, and why."""

    role: AccountRole


def _account_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound("no such account") from None


async def _locked(conn: AsyncConnection[Any], user_id: uuid.UUID) -> dict[str, Any]:
    """The enabled admins' rows, then the target's row, locked (in id order: no deadlock between two admins)."""
    await conn.execute("SELECT id FROM users WHERE role = 'admin' AND disabled_at IS NULL AND erased_at IS NULL"
                       " ORDER BY id FOR UPDATE")
    cur = await conn.execute("SELECT id, email, full_name, role, created_at, password_set_at, last_sign_in_at,"
                             " disabled_at FROM users WHERE id = %s FOR UPDATE", (user_id,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound("no such account")
    return dict(row)


async def _refuse_lock_out(conn: AsyncConnection[Any], account: dict[str, Any], actor: str, verb: str) -> None:
    """409 for the caller's own account, and for the last enabled admin account."""
    if str(account["id"]) == actor:
        raise AccountConflict(f"you cannot {verb} your own account: ask another admin",
                              details={"reason": "own_account"})
    if account["role"] == "admin" and account["disabled_at"] is None:
        cur = await conn.execute("SELECT count(*) AS n FROM users WHERE role = 'admin' AND disabled_at IS NULL"
                                 " AND erased_at IS NULL AND id <> %s", (account["id"],))
        others = await cur.fetchone()
        if others is None or others["n"] == 0:
            raise AccountConflict(f"you cannot {verb} the last enabled admin account",
                                  details={"reason": "last_admin"})


def _facts(row: dict[str, Any]) -> dict[str, Any]:
    """What the audit trail keeps of an account (no address, no name)."""
    return {"id": str(row["id"]), "role": row["role"], "disabled": row["disabled_at"] is not None}


async def _change(deps: Deps, conn: AsyncConnection[Any], before: dict[str, Any], assignment: str, value: object, *,
                  actor: str, action: str, reason: str, level: Level, message: str,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One admin change of a locked account row (`SET <assignment>` with `value`), its audit row and its health
    event, in the caller's transaction; the row as it is after."""
    cur = await conn.execute(sql.SQL("UPDATE users SET {} WHERE id = %s RETURNING id, email, full_name, role,"
                                     " created_at, password_set_at, last_sign_in_at, disabled_at")
                             .format(sql.SQL(assignment)), (value, before["id"]))  # assignment: a literal of ours
    after = await cur.fetchone() or before
    await record_audit(conn, actor=actor, action=action, reason=reason, before=_facts(before), after=_facts(after),
                       target=str(before["id"]))
    await record(conn, level, action, message,
                 {"user_id": str(before["id"]), "role": after["role"], **(extra or {}), "by": actor},
                 source=deps.source)
    return after


async def set_disabled(deps: Deps, account_id: str, command: ReasonCommand, *, disabled: bool,
                       actor: str) -> dict[str, Any]:
    """Disable (every token of the account refused, sign-in and set-password refused) or enable it again."""
    user_id = _account_id(account_id)
    action = "account_disabled" if disabled else "account_enabled"
    async with db.connection(deps.pool) as conn, conn.transaction():
        before = await _locked(conn, user_id)
        if (before["disabled_at"] is not None) == disabled:
            return account_view(before)
        if disabled:
            await _refuse_lock_out(conn, before, actor, "disable")
        after = await _change(deps, conn, before, "disabled_at = CASE WHEN %s THEN now() END", disabled,
                              actor=actor, action=action, reason=command.reason,
                              level=Level.WARNING if disabled else Level.INFO,
                              message=f"an account was {'disabled: its sessions end' if disabled else 'enabled again'}"
                                      " by an admin")
    deps.sessions.invalidate()
    return account_view(after)


async def change_role(deps: Deps, account_id: str, command: ChangeRoleCommand, *, actor: str) -> dict[str, Any]:
    """A new role; every older token of the account (which carries the old role) is refused."""
    user_id = _account_id(account_id)
    async with db.connection(deps.pool) as conn, conn.transaction():
        before = await _locked(conn, user_id)
        if before["role"] == command.role:
            return account_view(before)
        if before["role"] == "admin":
            await _refuse_lock_out(conn, before, actor, "demote")
        after = await _change(deps, conn, before, "role = %s", command.role, actor=actor,
                              action="account_role_changed", reason=command.reason, level=Level.WARNING,
                              message=f"an account's role changed {before['role']} -> {command.role}: its sessions"
                                      " end", extra={"from": before["role"], "to": command.role})
    deps.sessions.invalidate()
    return account_view(after)


async def revoke_sessions(deps: Deps, account_id: str, command: ReasonCommand, *, actor: str) -> dict[str, Any]:
    """End every token of the account issued so far: `{revoked_before}`."""
    user_id = _account_id(account_id)
    async with db.connection(deps.pool) as conn, conn.transaction():
        before = await _locked(conn, user_id)
        cur = await conn.execute("UPDATE users SET tokens_valid_after = clock_timestamp() WHERE id = %s"
                                 " RETURNING tokens_valid_after", (user_id,))
        row = await cur.fetchone()
        if row is None:  # never: the row is locked above
            raise NotFound("no such account")
        revoked_before: datetime = row["tokens_valid_after"]
        facts = {**_facts(before), "revoked_before": revoked_before.isoformat()}
        await record_audit(conn, actor=actor, action="account_sessions_revoked", reason=command.reason,
                           before=_facts(before), after=facts, target=str(user_id))
        await record(conn, Level.WARNING, "account_sessions_revoked",
                     "every session of an account was ended by an admin",
                     {"user_id": str(user_id), "revoked_before": revoked_before.isoformat(), "by": actor},
                     source=deps.source)
    deps.sessions.invalidate()
    return {"account_id": str(user_id), "revoked_before": revoked_before.isoformat()}


async def sign_out(deps: Deps, principal: Principal) -> None:
    """End the caller's token (a session of ours); prune signed-out tokens that have expired anyway."""
    session = principal.session
    if session is None:
        return
    async with db.connection(deps.pool) as conn, conn.transaction():
        await conn.execute("INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES (%s, %s, to_timestamp(%s))"
                           " ON CONFLICT (jti) DO NOTHING",
                           (session.token_id, session.account_id, session.expires_at))
        await conn.execute("DELETE FROM revoked_tokens WHERE expires_at < now() - interval '1 minute'")
        await record(conn, Level.INFO, "signed_out", "a session was ended by its holder (sign-out)",
                     {"user_id": session.account_id, "role": principal.role.value}, source=deps.source)
    deps.sessions.invalidate()
