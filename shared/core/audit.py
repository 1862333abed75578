"""The audit trail: one row per admin change (who, what, why, before, after), kept 400 days.

Written in the same transaction as the change it describes, so a change without its audit row cannot commit.
Values are the operator-facing state (modes, limits, ids, roles): never a password or a token.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from shared.core import db
from shared.core.health import scrub

AUDIT_RETENTION_DAYS = 400


async def record_audit(conn: AsyncConnection[Any], *, actor: str, action: str, reason: str | None,
                       before: dict[str, Any] | None, after: dict[str, Any] | None,
                       target: str | None = None) -> int:
    """Insert one audit row on `conn` (inside the caller's transaction); returns its id."""
    cur = await conn.execute(
        "INSERT INTO audit_log (actor, action, target, reason, before, after)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (actor, action, target, reason,
         Jsonb(scrub(before)) if before is not None else None,
         Jsonb(scrub(after)) if after is not None else None))
    row = await cur.fetchone()
    if row is None:
        raise RuntimeError("INSERT ... RETURNING returned no row")
    return int(row["id"])


async def list_audit(conn: AsyncConnection[Any], *, limit: int, after_id: int | None = None
                     ) -> list[dict[str, Any]]:
    """Newest first; `after_id` pages on to older rows (id < after_id)."""
    cur = await conn.execute(
        "SELECT id, at, actor, action, target, reason, before, after FROM audit_log"
        " WHERE (%(after)s::bigint IS NULL OR id < %(after)s) ORDER BY id DESC LIMIT %(limit)s",
        {"after": after_id, "limit": limit})
    return [{"id": r["id"], "at": r["at"].isoformat(), "actor": r["actor"], "action": r["action"],
             "target": r["target"], "reason": r["reason"], "before": r["before"], "after": r["after"]}
            for r in await cur.fetchall()]


async def read_audit(pool: AsyncConnectionPool, *, limit: int, after_id: int | None = None) -> list[dict[str, Any]]:
    """`list_audit` on a pooled connection (the admin listing)."""
    async with db.connection(pool) as conn:
        return await list_audit(conn, limit=limit, after_id=after_id)
