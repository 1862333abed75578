"""Runtime limits of the consumers (global start rate, jobs at once per consumer), changed without a restart.

Stored in PostgreSQL (`runtime_limits`, one row); with no row the configured defaults apply (RATE_LIMIT_MAX,
RATE_LIMIT_DURATION_MS, CONSUMER_CONCURRENCY). A change needs a reason, takes an optional `expected_version`
(optimistic locking, like the kill switch) and writes an audit row and an INFO event in its transaction.
Every consumer reads the row once a second (`LimitsFollower`), so a change is obeyed within about a second: a
plain poll of one primary-key row was chosen over LISTEN/NOTIFY, which needs a dedicated connection per
consumer and a re-read after every reconnect anyway.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Annotated, Any

from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field

from shared.core import db
from shared.core.audit import record_audit
from shared.core.errors import StaleVersion
from shared.core.health import Level, record
from shared.core.settings import Settings
from shared.creation.models import JsonInt, PlainText

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits in force, with who set them (version 0: the configured defaults, never changed)."""

    rate_limit_max: int
    rate_limit_duration_ms: int
    concurrency: int
    version: int = 0
    reason: str | None = None
    updated_at: datetime | None = None
    updated_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The contract's JSON shape."""
        values = asdict(self)
        values["updated_at"] = self.updated_at.isoformat() if self.updated_at else None
        return values

    def values(self) -> dict[str, int]:
        """The three limits only (audit before/after)."""
        return {"rate_limit_max": self.rate_limit_max, "rate_limit_duration_ms": self.rate_limit_duration_ms,
                "concurrency": self.concurrency}


class SetLimitsCommand(BaseModel):
    """An admin's change of the runtime limits."""

    model_config = ConfigDict(extra="forbid")

    rate_limit_max: Annotated[JsonInt, Field(ge=1, le=10_000)]
    rate_limit_duration_ms: Annotated[JsonInt, Field(ge=100, le=60_000)]
    concurrency: Annotated[JsonInt, Field(ge=1, le=100)]
    reason: Annotated[PlainText, Field(min_length=3, max_length=500)]
    expected_version: Annotated[JsonInt, Field(ge=0)] | None = None


def configured(settings: Settings) -> Limits:
    """The defaults from the environment."""
    return Limits(settings.rate_limit_max, settings.rate_limit_duration_ms, settings.consumer_concurrency)


_SELECT = ("SELECT rate_limit_max, rate_limit_duration_ms, concurrency, version, reason, updated_at, updated_by"
           " FROM runtime_limits WHERE id = 1")


async def read_limits(pool: AsyncConnectionPool, settings: Settings) -> Limits:
    """The limits in force now."""
    async with db.connection(pool) as conn:
        cur = await conn.execute(_SELECT)
        row = await cur.fetchone()
    return Limits(**row) if row else configured(settings)


async def set_limits(pool: AsyncConnectionPool, settings: Settings, command: SetLimitsCommand, *, actor: str,
                     source: str) -> Limits:
    """Store new limits (409 when `expected_version` is stale); audit row and INFO event in the same
    transaction."""
    async with db.connection(pool) as conn, conn.transaction():
        # Serialise writers even while no row exists yet (FOR UPDATE locks nothing then).
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('runtime_limits'))")
        cur = await conn.execute(_SELECT)
        row = await cur.fetchone()
        current = Limits(**row) if row else configured(settings)
        if command.expected_version is not None and command.expected_version != current.version:
            raise StaleVersion(
                f"the limits were changed by {current.updated_by} (version {current.version}) since you loaded them",
                details={"current": current.to_dict()})
        cur = await conn.execute(
            "INSERT INTO runtime_limits (id, rate_limit_max, rate_limit_duration_ms, concurrency, version, reason,"
            " updated_by) VALUES (1, %(max)s, %(ms)s, %(conc)s, %(version)s, %(reason)s, %(by)s)"
            " ON CONFLICT (id) DO UPDATE SET rate_limit_max = EXCLUDED.rate_limit_max,"
            " rate_limit_duration_ms = EXCLUDED.rate_limit_duration_ms, concurrency = EXCLUDED.concurrency,"
            " version = EXCLUDED.version, reason = EXCLUDED.reason, updated_by = EXCLUDED.updated_by,"
            " updated_at = now()"
            " RETURNING rate_limit_max, rate_limit_duration_ms, concurrency, version, reason, updated_at, updated_by",
            {"max": command.rate_limit_max, "ms": command.rate_limit_duration_ms, "conc": command.concurrency,
             "version": current.version + 1, "reason": command.reason, "by": actor})
        updated = Limits(**(await cur.fetchone() or {}))
        await record_audit(conn, actor=actor, action="limits_changed", reason=command.reason,
                           before=current.values(), after=updated.values(), target="runtime_limits")
        await record(conn, Level.INFO, "limits_changed",
                     f"runtime limits changed by {actor}: {updated.rate_limit_max} starts per "
                     f"{updated.rate_limit_duration_ms} ms, concurrency {updated.concurrency}",
                     {"before": current.values(), "after": updated.values(), "by": actor, "reason": command.reason,
                      "version": updated.version}, source=source)
    return updated


class LimitsFollower:
    """Keeps a consumer's start gate and worker concurrency equal to the stored limits (call `refresh()` once a
    second). A database hiccup keeps the last values and is logged, never raised."""

    def __init__(self, pool: AsyncConnectionPool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self.current = configured(settings)

    async def refresh(self) -> tuple[Limits, bool]:
        """(limits in force, whether they changed since the last call)."""
        try:
            latest = await read_limits(self._pool, self._settings)
        except Exception as exc:
            log.warning("runtime limits unreadable, keeping the last ones (%s)", type(exc).__name__)
            return self.current, False
        changed = latest.values() != self.current.values()
        self.current = latest
        return latest, changed
