"""Ended sessions, refused by every instance: a per-instance copy of the revocations, told of every change.

A token of our own sign-in (`Principal.session`, see shared/core/auth.py) is refused (401) when
- its `jti` was signed out (`revoked_tokens`, kept until the token's own expiry), or
- its `iat` is not after its account's `tokens_valid_after` second (a sign-out of every session, a role change,
  a disable, an erase, a password set), or its account is disabled or erased now.
Comparing whole seconds, a token issued in the same second as a revocation is refused with it; sign-in never
issues a token in the second of its account's last revocation (it waits for the next one, shared/accounts/signin.py).

Each instance keeps the revocations of the last `MAX_SESSION_S` (no token of ours lives longer) in memory and
reads them again, in one query, when PostgreSQL announces a change (LISTEN `provisioner_sessions`, sent by the
triggers of infra/migrations/0014_sessions.sql when the change commits) or once its copy is older than
`SESSION_CACHE_TTL_S` (the bound when the listener is down). A request with a session token costs a dictionary
look-up and a zero-timeout `select()`, no round trip, unless the copy is stale; other tokens cost nothing.
When PostgreSQL cannot be read the last copy stays in force (logged); with no copy yet, 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import psycopg
from psycopg_pool import AsyncConnectionPool

from shared.core import db
from shared.core.auth import LEEWAY_S, MAX_SESSION_S, Principal
from shared.core.errors import DatabaseUnavailable, Unauthorized
from shared.core.notify import ChannelListener

log = logging.getLogger(__name__)

SESSIONS_CHANNEL = "provisioner_sessions"  # the triggers of infra/migrations/0014_sessions.sql

_READ = """
SELECT id::text AS key, floor(extract(epoch FROM tokens_valid_after))::bigint AS valid_after,
       (disabled_at IS NOT NULL OR erased_at IS NOT NULL) AS blocked
  FROM users WHERE tokens_valid_after > now() - make_interval(secs => %(horizon)s)
UNION ALL
SELECT jti, NULL, NULL FROM revoked_tokens WHERE expires_at > now() - make_interval(secs => %(leeway)s)
"""

ENDED = "the session has ended: sign in again"


@dataclass(frozen=True, slots=True)
class Revocations:
    """One read of the revocations: per account (valid-after second, blocked now), and signed-out token ids."""

    accounts: dict[str, tuple[int, bool]] = field(default_factory=dict)
    token_ids: frozenset[str] = frozenset()

    def refuses(self, principal: Principal) -> bool:
        """Whether this session has ended."""
        session = principal.session
        if session is None:
            return False
        if session.token_id in self.token_ids:
            return True
        account = self.accounts.get(session.account_id)
        return account is not None and (account[1] or session.issued_at <= account[0])


class SessionRules:
    """The instance's copy of the revocations; `check()` refuses an ended session (401)."""

    def __init__(self, pool: AsyncConnectionPool, ttl_s: float) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._listener = ChannelListener(pool, SESSIONS_CHANNEL, name="sessions-listener", what="ended sessions",
                                         ttl_s=ttl_s)
        self._copy: Revocations | None = None
        self._read_at = 0.0
        self._reading: asyncio.Lock | None = None

    @property
    def listening(self) -> bool:
        """True while this instance's LISTEN connection is up."""
        return self._listener.listening

    async def check(self, principal: Principal) -> None:
        """401 when the caller's session has ended; nothing for a token that is not a session of ours."""
        if principal.session is None:
            return
        if (await self.current()).refuses(principal):
            raise Unauthorized(ENDED, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    async def current(self) -> Revocations:
        """The copy: read again after a notification, or once older than the TTL (one reader at a time)."""
        self._listener.start()
        fresh = self._fresh_copy()
        if fresh is not None:
            return fresh
        if self._reading is None:
            self._reading = asyncio.Lock()
        async with self._reading:
            fresh = self._fresh_copy()  # another request may have read it while this one waited
            if fresh is not None:
                return fresh
            started = time.monotonic()
            self._listener.consume()
            try:
                copy = await self._read()
            except (DatabaseUnavailable, psycopg.Error) as exc:
                if self._copy is None:
                    raise DatabaseUnavailable() from exc
                log.warning("ended sessions unreadable (%s): the last copy stays in force", type(exc).__name__)
                return self._copy
            self._copy, self._read_at = copy, started
            return copy

    def invalidate(self) -> None:
        """Read again on the next check (after this instance ended a session itself)."""
        self._copy = None

    async def aclose(self) -> None:
        """Stop listening (the instance is closing)."""
        await self._listener.aclose()

    def _fresh_copy(self) -> Revocations | None:
        if self._copy is not None and time.monotonic() - self._read_at < self._ttl_s and not self._listener.notified():
            return self._copy
        return None

    async def _read(self) -> Revocations:
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(_READ, {"horizon": MAX_SESSION_S + LEEWAY_S, "leeway": LEEWAY_S})
            rows = await cur.fetchall()
        accounts = {r["key"]: (int(r["valid_after"]), bool(r["blocked"])) for r in rows if r["valid_after"] is not None}
        return Revocations(accounts, frozenset(r["key"] for r in rows if r["valid_after"] is None))
