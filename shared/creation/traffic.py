"""The kill switch: the configured traffic mode in `system_config`, cached per instance and refreshed when
PostgreSQL announces a flip."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from shared.core import db
from shared.core.audit import record_audit
from shared.core.errors import DatabaseUnavailable, StaleVersion
from shared.core.health import Level, record
from shared.core.notify import ChannelListener
from shared.creation.models import SetModeCommand, TrafficMode

log = logging.getLogger(__name__)

TRAFFIC_MODE_KEY = "traffic_mode"


@dataclass(frozen=True, slots=True)
class ModeState:
    """The switch as stored: mode, optimistic-lock version, who set it, when and why, and when it returns by
    itself (`revert_at`, None when it does not)."""

    mode: TrafficMode
    version: int
    reason: str | None
    updated_at: datetime
    updated_by: str
    revert_at: datetime | None = None
    revert_to: TrafficMode | None = None
    revert_due: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON shape used by the admin functions."""
        return {"mode": self.mode.value, "version": self.version, "reason": self.reason,
                "updated_at": self.updated_at.isoformat(), "updated_by": self.updated_by,
                "revert_at": self.revert_at.isoformat() if self.revert_at else None,
                "revert_to": self.revert_to.value if self.revert_to else None}

    def audit_view(self) -> dict[str, Any]:
        """What the audit trail keeps of the switch."""
        return {"mode": self.mode.value, "version": self.version,
                "revert_at": self.revert_at.isoformat() if self.revert_at else None}


def _state(row: dict[str, Any]) -> ModeState:
    return ModeState(TrafficMode(row["value"]), row["version"], row["reason"], row["updated_at"],
                     row["updated_by"], row["revert_at"], TrafficMode(row["revert_to"]) if row["revert_to"] else None,
                     bool(row["revert_due"]))


_SELECT = ("SELECT value, version, reason, updated_at, updated_by, revert_at, revert_to,"
           " coalesce(revert_at <= now(), false) AS revert_due FROM system_config WHERE key = %s")
AUTOMATIC_ACTOR = "system"


async def read_mode(pool: AsyncConnectionPool, *, source: str = "") -> ModeState:
    """The switch straight from PostgreSQL. A return that is due is carried out first (by whichever instance
    reads it first), so the switch comes back on time even between two scheduler ticks."""
    async with db.connection(pool) as conn:
        cur = await conn.execute(_SELECT, (TRAFFIC_MODE_KEY,))
        row = await cur.fetchone()
    if row is None:
        raise DatabaseUnavailable("system_config has no traffic_mode row; run the migrations")
    state = _state(row)
    if state.revert_due:
        return await revert_if_due(pool, source=source or "mode-reader") or state
    return state


async def set_mode(pool: AsyncConnectionPool, command: SetModeCommand, *, actor: str, source: str) -> ModeState:
    """Flip the switch. Optimistic locking on `expected_version`; a SWITCH event and an audit row record who,
    why, from, to (and when it returns by itself, with `revert_after_s`), in the same transaction.

    Setting the mode it already has changes nothing and writes nothing, unless it cancels a pending return.
    """
    async with db.connection(pool) as conn, conn.transaction():
        cur = await conn.execute(_SELECT + " FOR UPDATE", (TRAFFIC_MODE_KEY,))
        row = await cur.fetchone()
        if row is None:
            raise DatabaseUnavailable("system_config has no traffic_mode row; run the migrations")
        current = _state(row)
        if command.expected_version is not None and command.expected_version != current.version:
            raise StaleVersion(
                f"the mode was changed by {current.updated_by} (version {current.version}) since you loaded it",
                details={"current": current.to_dict()},
            )
        if current.mode == command.mode and (current.revert_at is None or command.revert_after_s is not None):
            return current
        revert_after = command.revert_after_s if current.mode != command.mode else None
        cur = await conn.execute(
            "UPDATE system_config SET value = %s, version = version + 1, reason = %s, updated_at = now(),"
            " updated_by = %s, revert_at = now() + make_interval(secs => %s), revert_to = %s"
            " WHERE key = %s RETURNING value, version, reason, updated_at, updated_by, revert_at, revert_to,"
            " false AS revert_due",
            (command.mode.value, command.reason, actor, revert_after,
             current.mode.value if revert_after else None, TRAFFIC_MODE_KEY),
        )
        updated = _state(await cur.fetchone() or {})
        returns_at = updated.revert_at.isoformat() if updated.revert_at else None
        returns = f", back to {current.mode.value} at {returns_at}" if returns_at else ""
        await record_audit(conn, actor=actor, action="mode_switch", reason=command.reason,
                           before=current.audit_view(), after=updated.audit_view(), target=TRAFFIC_MODE_KEY)
        await record(
            conn, Level.SWITCH, "mode_switched",
            f"traffic mode {current.mode.value} -> {updated.mode.value} by {actor}{returns}",
            {"from": current.mode.value, "to": updated.mode.value, "by": actor, "reason": command.reason,
             "version": updated.version, "automatic": False,
             **({"revert_at": returns_at, "revert_after_s": revert_after} if returns_at else {})},
            source=source,
        )
    return updated


async def revert_if_due(pool: AsyncConnectionPool, *, source: str) -> ModeState | None:
    """Return the switch to its previous mode when its `revert_at` has passed: SWITCH event + audit row (actor
    `system`). Safe from any number of instances at once (row lock; the second finds nothing due)."""
    async with db.connection(pool) as conn, conn.transaction():
        cur = await conn.execute(_SELECT + " FOR UPDATE", (TRAFFIC_MODE_KEY,))
        row = await cur.fetchone()
        if row is None or not row["revert_due"] or row["revert_to"] is None:
            return None
        current = _state(row)
        reason = f"automatic return after the switch set by {current.updated_by} ({current.reason})"[:500]
        cur = await conn.execute(
            "UPDATE system_config SET value = revert_to, version = version + 1, reason = %s, updated_at = now(),"
            " updated_by = %s, revert_at = NULL, revert_to = NULL WHERE key = %s"
            " RETURNING value, version, reason, updated_at, updated_by, revert_at, revert_to, false AS revert_due",
            (reason, AUTOMATIC_ACTOR, TRAFFIC_MODE_KEY))
        updated = _state(await cur.fetchone() or {})
        await record_audit(conn, actor=AUTOMATIC_ACTOR, action="mode_revert", reason=reason,
                           before=current.audit_view(), after=updated.audit_view(), target=TRAFFIC_MODE_KEY)
        await record(conn, Level.SWITCH, "mode_reverted",
                     f"traffic mode {current.mode.value} -> {updated.mode.value}: the switch returned by itself",
                     {"from": current.mode.value, "to": updated.mode.value, "by": AUTOMATIC_ACTOR,
                      "set_by": current.updated_by, "reason": current.reason, "version": updated.version,
                      "automatic": True}, source=source)
    log.info("traffic mode returned to %s by itself", updated.mode.value)
    return updated


MODE_CHANNEL = "provisioner_traffic_mode"  # the trigger of infra/migrations/0012_mode_notify.sql


class ModeCache:
    """Per-instance cache of the switch, told of every flip by PostgreSQL (LISTEN/NOTIFY, `ChannelListener`).

    A notification (handled by the listener's task, or still unread in its socket: Cloud Run throttles the CPU
    between requests) marks the cached value stale and the next request reads the switch again: a flip reaches
    every instance within a few milliseconds instead of `ttl_s`.

    The TTL stays the bound when the listener is down (database restarted, backend terminated): the cached value
    is read again once older than `ttl_s`, and the listener reconnects (a WARNING when it is lost, an INFO when
    it is back). When PostgreSQL cannot be read, the last known mode stays in force (and the failure is logged).
    """

    def __init__(self, pool: AsyncConnectionPool, ttl_s: float) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._state: ModeState | None = None
        self._read_at = 0.0
        self._listener = ChannelListener(pool, MODE_CHANNEL, name="mode-listener", what="traffic mode", ttl_s=ttl_s)

    @property
    def listening(self) -> bool:
        """True while the LISTEN connection is up (the health view and tests read it)."""
        return self._listener.listening

    async def current(self) -> ModeState:
        """The configured mode: read again after a notification, or once the cached value is older than the TTL."""
        self._listener.start()
        now = time.monotonic()
        if self._state is not None and now - self._read_at < self._ttl_s and not self._listener.notified():
            return self._state
        self._listener.consume()  # a notification arriving during the read marks it stale again
        try:
            self._state = await read_mode(self._pool)
            self._read_at = now
        except DatabaseUnavailable:
            if self._state is None:
                raise
            log.warning("traffic mode unreadable, keeping the last known mode %s", self._state.mode.value)
        return self._state

    def invalidate(self) -> None:
        """Forget the cached value (after this instance changed the switch itself)."""
        self._state = None

    async def aclose(self) -> None:
        """Stop listening (the instance is closing)."""
        await self._listener.aclose()
