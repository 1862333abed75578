"""Health events: the operator-visible trail in `system_health_logs` (never an address, token or password)."""

from __future__ import annotations

import logging
import re
from enum import StrEnum
from typing import Annotated, Any

from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field

from shared.core import db, tracing
from shared.core.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

_EMAIL = re.compile(r"[^\s@]+@[^\s@]+")
_SECRET_KEYS = re.compile(r"pass|token|secret|authorization|email", re.IGNORECASE)


class LogQuery(BaseModel):
    """Filters of the health log listing."""

    model_config = ConfigDict(extra="forbid")

    limit: Annotated[int, Field(ge=1, le=500)] = 50
    level: Annotated[str, Field(pattern=r"^(INFO|WARNING|ERROR|SWITCH)$")] | None = None
    after_id: Annotated[int, Field(ge=0)] | None = None
    before_id: Annotated[int, Field(ge=1)] | None = None  # pages back through older events


class Level(StrEnum):
    """Severity of a health event; SWITCH marks every change of the traffic mode."""

    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    SWITCH = "SWITCH"


def scrub(value: Any, key: str = "") -> Any:
    """Defence in depth: drop secret-looking keys and mask anything shaped like an email address."""
    if _SECRET_KEYS.search(key):
        return "[redacted]"
    if isinstance(value, dict):
        return {str(k): scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return _EMAIL.sub("[redacted-email]", value)
    return value


def prepared(level: Level, event: str, message: str, metadata: dict[str, Any] | None = None, *,
             source: str = "") -> dict[str, Any]:
    """The scrubbed column values of an event, as `ev_*` query parameters (for an INSERT inside a larger
    statement; call `log_event` once it committed)."""
    return {"ev_level": level.value, "ev_event": event, "ev_message": scrub(message),
            "ev_metadata": Jsonb(scrub(_with_trace(metadata))), "ev_source": source or "unknown"}


def _with_trace(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """A creation request's event also names the current trace: the request's own (its timeline links to it).
    An admin's action on a request (metadata `by`) runs in the admin's call, not in the request's trace: none."""
    if not metadata or "request_id" not in metadata or "trace_id" in metadata or "by" in metadata:
        return metadata or {}
    trace_id = tracing.current_trace_id()
    return metadata if trace_id is None else {**metadata, "trace_id": trace_id}


def log_event(level: Level, event: str) -> None:
    """The process log line of an event (ids and names only, like the event)."""
    log.log(logging.WARNING if level in (Level.WARNING, Level.ERROR) else logging.INFO,
            "health_event level=%s event=%s", level.value, event)


async def record(conn: AsyncConnection[Any], level: Level, event: str, message: str,
                 metadata: dict[str, Any] | None = None, *, source: str = "") -> None:
    """Write an event on the caller's connection (so it commits or rolls back with the caller's work)."""
    await conn.execute(
        "INSERT INTO system_health_logs (level, event, message, metadata, source)"
        " VALUES (%(ev_level)s, %(ev_event)s, %(ev_message)s, %(ev_metadata)s, %(ev_source)s)",
        prepared(level, event, message, metadata, source=source),
    )
    log_event(level, event)


async def record_detached(pool: AsyncConnectionPool, level: Level, event: str, message: str,
                          metadata: dict[str, Any] | None = None, *, source: str = "") -> bool:
    """Write an event on its own connection. Never raises: when the database is down the event goes
    to the process log instead (at ERROR, so it is seen), and False is returned."""
    try:
        async with db.connection(pool) as conn:
            await record(conn, level, event, message, metadata, source=source)
        return True
    except DatabaseUnavailable:
        log.error("health event not stored (database unavailable): level=%s event=%s message=%s",
                  level.value, event, scrub(message))
        return False


async def list_events(pool: AsyncConnectionPool, query: LogQuery) -> list[dict[str, Any]]:
    """Newest first; optionally one level, only ids after a known one (refresh) or before one (paging back)."""
    conditions = [sql.SQL("TRUE")]
    params: list[Any] = []
    if query.level:
        conditions.append(sql.SQL("level = %s"))
        params.append(query.level)
    if query.after_id is not None:
        conditions.append(sql.SQL("id > %s"))
        params.append(query.after_id)
    if query.before_id is not None:
        conditions.append(sql.SQL("id < %s"))
        params.append(query.before_id)
    params.append(query.limit)
    stmt = sql.SQL(
        "SELECT id, created_at, level, event, message, metadata FROM system_health_logs"
        " WHERE {} ORDER BY id DESC LIMIT %s"
    ).format(sql.SQL(" AND ").join(conditions))
    async with db.connection(pool) as conn:
        cur = await conn.execute(stmt, params)
        rows = await cur.fetchall()
    return [{**row, "created_at": row["created_at"].isoformat()} for row in rows]
