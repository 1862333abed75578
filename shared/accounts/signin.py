"""Use case: sign in with email and password, get a bearer token in the contract's shape.

The token is the same kind every route already accepts: HS256 with AUTH_JWT_SECRET, `aud` authenticated,
`sub` the account's id, `app_metadata.role` the account's role, `exp` in ACCESS_TOKEN_TTL_S (1 h); and, as a
session of ours, `iss` "provisioner", a random `jti` and `iat` from the database's clock (shared/core/auth.py),
which sign-out and the revocations end (shared/core/sessions.py). A member (made through POST /api/users) gets
role `member`, which no staff route accepts (403).

A wrong address, an account without a password yet, a wrong password and a disabled (or erased) account all
get the same 401 after the same work (an Argon2id verification, against a dummy hash when there is nothing to
verify against). Throttled attempts (see shared/accounts/signin_throttle.py) get 429 + Retry-After without any
password check. A hash made with older parameters is re-made with the current ones on the next successful
sign-in.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from shared.accounts.passwords import hash_password, verify_password
from shared.accounts.signin_throttle import Attempt, count_attempt, forgive
from shared.bootstrap import Deps
from shared.core import db
from shared.core.auth import Role, issue_session_token
from shared.core.errors import DomainError, Unauthorized
from shared.core.health import Level, record, record_detached
from shared.core.identity import normalize_email

WRONG_CREDENTIALS = "the email address or the password is wrong"


class RateLimited(DomainError):
    """Too many attempts: 429 with Retry-After."""

    status, code = 429, "rate_limited"


class SignInCommand(BaseModel):
    """What the sign-in form sends."""

    model_config = ConfigDict(extra="forbid")

    email: Annotated[str, Field(min_length=1, max_length=320)]
    password: Annotated[str, Field(min_length=1, max_length=4096)]


def client_address(forwarded_for: list[str], peer: str | None, trusted_hops: int) -> str:
    """The caller's address: the `trusted_hops`-th X-Forwarded-For entry from the right (the one our own
    proxy wrote; entries left of it are whatever the client sent), else the TCP peer."""
    entries = [part.strip() for header in forwarded_for for part in header.split(",") if part.strip()]
    if trusted_hops and len(entries) >= trusted_hops:
        return entries[-trusted_hops]
    return peer or "unknown"


async def sign_in(deps: Deps, command: SignInCommand, *, address: str) -> dict[str, Any]:
    """200 body `{access_token, token_type, expires_in}`; 401 wrong email or password; 429 throttled."""
    email = normalize_email(command.email)
    attempt = await count_attempt(deps, email, address)
    if attempt.attack:
        await _attack_signal(deps, email, attempt)
    if attempt.retry_after_s:
        if attempt.first_refusal:
            await record_detached(deps.pool, Level.WARNING, "sign_in_throttled",
                                  f"too many sign-in attempts for one {attempt.scope.replace('_', ' and ')}:"
                                  f" refused for {attempt.retry_after_s} s",
                                  {"scope": attempt.scope, "retry_after_s": attempt.retry_after_s},
                                  source=deps.source)
        raise RateLimited("too many sign-in attempts: wait and try again",
                          headers={"Retry-After": str(attempt.retry_after_s)})
    async with db.connection(deps.pool) as conn:
        cur = await conn.execute("SELECT id, password_hash, disabled_at IS NOT NULL OR erased_at IS NOT NULL"
                                 " AS blocked FROM users WHERE email_normalized = %s", (email,))
        account = await cur.fetchone()
    stored = account["password_hash"] if account else None
    # A disabled account is verified like any other (the same work), then refused like a wrong password.
    verification = await verify_password(stored, command.password)
    if account is None or not verification.ok or account["blocked"]:
        raise Unauthorized(WRONG_CREDENTIALS)
    new_hash = await hash_password(command.password) if verification.needs_rehash else None
    async with db.connection(deps.pool) as conn, conn.transaction():
        # Under the row lock: the password is still the one verified, the account still enabled (a password
        # set or a disable committed meanwhile wins), and the role is the current one.
        cur = await conn.execute(_ISSUE, {"id": account["id"], "stored": stored, "new": new_hash or stored})
        row = await cur.fetchone()
        if row is None:
            raise Unauthorized(WRONG_CREDENTIALS)
        issued_at = math.floor(row["now_s"])
        if row["valid_after"] is not None and issued_at <= row["valid_after"]:
            # Sessions end by whole seconds (shared/core/sessions.py): wait for the second after the account's
            # last revocation, still holding the lock, so this token is newer than it and older than any next one.
            cur = await conn.execute(_NEXT_SECOND, {"wait": row["valid_after"] + 1 - row["now_s"]})
            later = await cur.fetchone()
            issued_at = int(later["now_s"]) if later else row["valid_after"] + 1
        await record(conn, Level.INFO, "signed_in", f"an account signed in (role {row['role']})",
                     {"user_id": str(account["id"]), "role": row["role"], "rehashed": new_hash is not None},
                     source=deps.source)
    await forgive(deps, attempt)
    ttl = deps.settings.access_token_ttl_s
    token = issue_session_token(deps.settings, role=Role(row["role"]), account_id=str(account["id"]),
                                issued_at=issued_at, ttl_s=ttl)
    # "bearer" is the OAuth 2.0 token type name, not a secret.
    return {"access_token": token, "token_type": "bearer", "expires_in": ttl}  # nosec B105


_ISSUE = """
UPDATE users SET last_sign_in_at = now(), password_hash = %(new)s
 WHERE id = %(id)s AND password_hash = %(stored)s AND disabled_at IS NULL AND erased_at IS NULL
RETURNING role, extract(epoch FROM clock_timestamp())::float8 AS now_s,
          floor(extract(epoch FROM tokens_valid_after))::bigint AS valid_after
"""
_NEXT_SECOND = ("SELECT pg_sleep(%(wait)s + 0.001),"
                " floor(extract(epoch FROM clock_timestamp()))::bigint AS now_s")


async def _attack_signal(deps: Deps, email: str, attempt: Attempt) -> None:
    """The account's attempts reached the ceiling (or a further multiple of it): a WARNING event, which the
    watchdog's `sign_in_attack` condition turns into an alert. The account is not locked."""
    async with db.connection(deps.pool) as conn:
        cur = await conn.execute("SELECT id FROM users WHERE email_normalized = %s", (email,))
        found = await cur.fetchone()
        await record(conn, Level.WARNING, "sign_in_attack",
                     f"{attempt.account_attempts} sign-in attempts for one account in"
                     f" {deps.settings.sign_in_window_s} s: the account is not locked, each client is throttled",
                     {"user_id": str(found["id"]) if found else None, "attempts": attempt.account_attempts,
                      "window_s": deps.settings.sign_in_window_s}, source=deps.source)
