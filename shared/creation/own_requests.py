"""A caller's own recent creation requests (the sales desk's list): newest first, never another caller's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.bootstrap import Deps
from shared.core import db
from shared.core.auth import Principal
from shared.core.errors import InvalidInput


def limit_param(params: Mapping[str, str], *, default: int = 50, maximum: int = 200) -> int:
    """`?limit=` (1 to `maximum`), the only query parameter these lists take; anything else is a 422."""
    unknown = sorted(set(params) - {"limit"})
    if unknown:
        raise InvalidInput("unknown query parameter", details=[{"field": f, "message": "unknown"} for f in unknown])
    value = params.get("limit")
    if value is None:
        return default
    # str.isdigit() is true for "²" too: only a short run of ASCII digits is a number here.
    if not (value.isascii() and value.isdigit() and len(value) <= 6) or not 1 <= int(value) <= maximum:
        raise InvalidInput(f"limit must be a whole number from 1 to {maximum}",
                           details=[{"field": "limit", "message": f"1-{maximum}"}])
    return int(value)


async def own_requests(deps: Deps, principal: Principal, limit: int) -> list[dict[str, Any]]:
    """The caller's (`sub`) most recent requests, single or bulk, with their status."""
    async with db.connection(deps.pool) as conn:
        cur = await conn.execute(
            "SELECT id, status, mode, fallback, email, full_name, batch_id, batch_row, error_code, error,"
            " user_id, created_at, updated_at FROM creation_requests WHERE actor = %s"
            " ORDER BY created_at DESC, batch_row DESC NULLS LAST LIMIT %s", (principal.subject, limit))
        rows = await cur.fetchall()
    return [{"request_id": r["id"], "status": r["status"], "mode": r["mode"], "fallback": r["fallback"],
             "email": r["email"], "full_name": r["full_name"], "batch_id": r["batch_id"], "row": r["batch_row"],
             "error_code": r["error_code"], "error": r["error"],
             "user_id": str(r["user_id"]) if r["user_id"] else None,
             "created_at": r["created_at"].isoformat(), "updated_at": r["updated_at"].isoformat()}
            for r in rows]
