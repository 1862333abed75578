"""The kill switch: the configured traffic mode in `system_config`, cached briefly per instance."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from shared import db
from shared.errors import DatabaseUnavailable, StaleVersion
from shared.health import Level, record
from shared.models import SetModeCommand, TrafficMode

log = logging.getLogger(__name__)

TRAFFIC_MODE_KEY = "traffic_mode"


@dataclass(frozen=True, slots=True)
class ModeState:
    """The switch as stored: mode, optimistic-lock version, and who set it, when and why."""

    mode: TrafficMode
    version: int
    reason: str | None
    updated_at: datetime
    updated_by: str

    def to_dict(self) -> dict[str, Any]:
        """JSON shape used by the admin functions."""
        return {"mode": self.mode.value, "version": self.version, "reason": self.reason,
                "updated_at": self.updated_at.isoformat(), "updated_by": self.updated_by}


def _state(row: dict[str, Any]) -> ModeState:
    return ModeState(TrafficMode(row["value"]), row["version"], row["reason"], row["updated_at"],
                     row["updated_by"])


_SELECT = "SELECT value, version, reason, updated_at, updated_by FROM system_config WHERE key = %s"


async def read_mode(pool: AsyncConnectionPool) -> ModeState:
    """The switch straight from PostgreSQL."""
    async with db.connection(pool) as conn:
        cur = await conn.execute(_SELECT, (TRAFFIC_MODE_KEY,))
        row = await cur.fetchone()
    if row is None:
        raise DatabaseUnavailable("system_config has no traffic_mode row; run the migrations")
    return _state(row)


async def set_mode(pool: AsyncConnectionPool, command: SetModeCommand, *, actor: str, source: str) -> ModeState:
    """Flip the switch. Optimistic locking on `expected_version`; a SWITCH event records who, why, from, to.

    Setting the mode it already has changes nothing and writes no event.
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
        if current.mode == command.mode:
            return current
        cur = await conn.execute(
            "UPDATE system_config SET value = %s, version = version + 1, reason = %s, updated_at = now(),"
            " updated_by = %s WHERE key = %s RETURNING value, version, reason, updated_at, updated_by",
            (command.mode.value, command.reason, actor, TRAFFIC_MODE_KEY),
        )
        updated = _state(await cur.fetchone() or {})
        await record(
            conn, Level.SWITCH, "mode_switched",
            f"traffic mode {current.mode.value} -> {updated.mode.value} by {actor}",
            {"from": current.mode.value, "to": updated.mode.value, "by": actor, "reason": command.reason,
             "version": updated.version, "automatic": False},
            source=source,
        )
    return updated


class ModeCache:
    """Per-instance cache of the switch: at most `ttl_s` old, so a flip reaches every instance in time.

    When PostgreSQL cannot be read, the last known mode stays in force (and the failure is logged).
    """

    def __init__(self, pool: AsyncConnectionPool, ttl_s: float) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._state: ModeState | None = None
        self._read_at = 0.0

    async def current(self) -> ModeState:
        """The configured mode, read again once the cached value is older than the TTL."""
        now = time.monotonic()
        if self._state is not None and now - self._read_at < self._ttl_s:
            return self._state
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
