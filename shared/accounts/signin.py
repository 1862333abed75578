"""Use case: sign in with email and password, get a bearer token in the contract's shape.

The token is the same kind every route already accepts: HS256 with AUTH_JWT_SECRET, `aud` authenticated,
`sub` the account's id, `app_metadata.role` the account's role, `exp` in ACCESS_TOKEN_TTL_S (1 h). A member
(made through POST /api/users) gets role `member`, which no staff route accepts (403).

A wrong address, an account without a password yet and a wrong password all get the same 401 after the same
work (an Argon2id verification against a dummy hash when there is nothing to verify against). Throttled
attempts (see shared/accounts/signin_throttle.py) get 429 + Retry-After without any password check. A hash made with
older parameters is re-made with the current ones on the next successful sign-in.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from shared.accounts.passwords import hash_password, verify_password
from shared.accounts.signin_throttle import count_attempt, forgive
from shared.bootstrap import Deps
from shared.core import db
from shared.core.auth import Role, issue_token
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
    if attempt.retry_after_s:
        if attempt.first_refusal:
            await record_detached(deps.pool, Level.WARNING, "sign_in_throttled",
                                  f"too many sign-in attempts for one {attempt.scope}: refused for "
                                  f"{attempt.retry_after_s} s", {"scope": attempt.scope,
                                                                 "retry_after_s": attempt.retry_after_s},
                                  source=deps.source)
        raise RateLimited("too many sign-in attempts: wait and try again",
                          headers={"Retry-After": str(attempt.retry_after_s)})
    async with db.connection(deps.pool) as conn:
        cur = await conn.execute("SELECT id, role, password_hash FROM users WHERE email_normalized = %s", (email,))
        account = await cur.fetchone()
    stored = account["password_hash"] if account else None
    verification = await verify_password(stored, command.password)
    if account is None or not verification.ok:
        raise Unauthorized(WRONG_CREDENTIALS)
    await forgive(deps, attempt)
    new_hash = await hash_password(command.password) if verification.needs_rehash else None
    async with db.connection(deps.pool) as conn, conn.transaction():
        if new_hash is not None:
            # Compare-and-set: a password changed meanwhile is never overwritten with the old one.
            await conn.execute("UPDATE users SET password_hash = %s WHERE id = %s AND password_hash = %s",
                               (new_hash, account["id"], stored))
        await conn.execute("UPDATE users SET last_sign_in_at = now() WHERE id = %s", (account["id"],))
        await record(conn, Level.INFO, "signed_in", f"an account signed in (role {account['role']})",
                     {"user_id": str(account["id"]), "role": account["role"], "rehashed": new_hash is not None},
                     source=deps.source)
    ttl = deps.settings.access_token_ttl_s
    token = issue_token(deps.settings, role=Role(account["role"]), subject=str(account["id"]), ttl_s=ttl)
    # "bearer" is the OAuth 2.0 token type name, not a secret.
    return {"access_token": token, "token_type": "bearer", "expires_in": ttl}  # nosec B105
