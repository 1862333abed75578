"""Search over creation requests: a substring of the address or name, status, caller, time range, newest first.

The substring match runs on `creation_requests.search_key`, which PostgreSQL computes on every write with
`search_fold` (NFKC + Unicode case folding) and indexes with a trigram GIN index, so `LIKE '%...%'` stays fast
at a million rows. The query string is folded by the same SQL function, never by a second implementation.

Pages are keyset pages: the cursor is the (created_at, id) of the last row, signed with an HMAC so a cursor
from elsewhere (another filter set, another deployment, a hand-made one) is refused instead of misread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection, sql

from shared.bootstrap import Deps
from shared.core import db
from shared.core.errors import InvalidInput

STATUSES = ("queued", "processing", "created", "failed")
SEARCH_PARAMS = frozenset({"q", "status", "actor", "from", "to", "limit", "cursor"})
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
CURSOR_VERSION = 1
MAX_Q = 200


@dataclass(frozen=True, slots=True)
class RequestFilter:
    """What to look for; every field optional."""

    q: str | None = None
    status: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class InvalidCursor(InvalidInput):
    """422 `invalid_cursor`: a cursor this listing did not hand out."""

    code = "invalid_cursor"

    def __init__(self) -> None:
        super().__init__("cursor: not a cursor of this listing (use next_cursor as it was given)",
                         details=[{"field": "cursor", "message": "not a cursor of this listing"}])


def _bad(field: str, message: str) -> InvalidInput:
    return InvalidInput(f"{field}: {message}", details=[{"field": field, "message": message}])


def parse_time(field: str, value: str) -> datetime:
    """An ISO 8601 time; without a zone it is UTC. 422 otherwise."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _bad(field, "not an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_filter(values: Mapping[str, Any], *, prefix: str = "") -> RequestFilter:
    """Check the filter fields (query parameters or a JSON object); 422 names the bad one."""
    q = values.get("q")
    if "q" in values and (not isinstance(q, str) or len(q) > MAX_Q or "\x00" in q):
        raise _bad(prefix + "q", f"text of at most {MAX_Q} characters")
    status = values.get("status")
    if "status" in values and status not in STATUSES:
        raise _bad(prefix + "status", f"one of {', '.join(STATUSES)}")
    actor = values.get("actor")
    if "actor" in values and (not isinstance(actor, str) or len(actor) > 200 or "\x00" in actor):
        raise _bad(prefix + "actor", "text of at most 200 characters")
    since, until = values.get("from"), values.get("to")
    for name, value in (("from", since), ("to", until)):
        if name in values and not isinstance(value, str):
            raise _bad(prefix + name, "not an ISO 8601 time")
    since_t = parse_time(prefix + "from", since) if isinstance(since, str) else None
    until_t = parse_time(prefix + "to", until) if isinstance(until, str) else None
    if since_t and until_t and since_t > until_t:
        raise _bad(prefix + "from", "must not be after 'to'")
    return RequestFilter(q=q.strip() or None if isinstance(q, str) else None, status=status or None,
                         actor=actor or None, since=since_t, until=until_t)


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """One listing request: the filter, the page size and where the page starts (a cursor of ours, or None)."""

    filter: RequestFilter
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None


def parse_search_query(pairs: Iterable[tuple[str, str]]) -> SearchQuery:
    """`?q, status, actor, from, to, limit, cursor` as (name, value) pairs in order; 422 names every unknown or
    repeated parameter, a limit that is not 1-500 in ASCII digits, and the first bad filter field."""
    values: dict[str, str] = {}
    repeated: set[str] = set()
    for name, value in pairs:
        if name in values:
            repeated.add(name)
        values[name] = value
    unknown = sorted(set(values) - SEARCH_PARAMS)
    if unknown or repeated:
        raise InvalidInput("unknown or repeated query parameter",
                           details=[{"field": f, "message": "unknown"} for f in unknown]
                           + [{"field": f, "message": "given more than once"} for f in sorted(repeated)])
    limit = values.get("limit", str(DEFAULT_LIMIT))
    # str.isdigit() is true for "²" too: only a short run of ASCII digits is a number here.
    if not (limit.isascii() and limit.isdigit() and len(limit) <= 4) or not 1 <= int(limit) <= MAX_LIMIT:
        raise _bad("limit", f"1-{MAX_LIMIT}")
    return SearchQuery(parse_filter(values), limit=int(limit), cursor=values.get("cursor") or None)


def _cursor_key(deps: Deps) -> bytes:
    return hashlib.sha256(b"request-search-cursor:" + deps.settings.auth_jwt_secret.get_secret_value().encode()
                          ).digest()


def encode_cursor(deps: Deps, created_at: datetime, request_id: str) -> str:
    """Opaque, signed position after the row (created_at, id)."""
    payload = base64.urlsafe_b64encode(json.dumps([CURSOR_VERSION, created_at.isoformat(), request_id],
                                                  separators=(",", ":")).encode()).decode().rstrip("=")
    mac = hmac.new(_cursor_key(deps), payload.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{payload}.{mac}"


def decode_cursor(deps: Deps, cursor: str) -> tuple[datetime, str]:
    """The position a cursor of ours points at; 422 for anything else."""
    payload, _, mac = cursor.partition(".")
    expected = hmac.new(_cursor_key(deps), payload.encode(), hashlib.sha256).hexdigest()[:32]
    # Bytes: compare_digest refuses a str with non-ASCII characters (a TypeError, once a 500).
    if not mac or not hmac.compare_digest(mac.encode(errors="replace"), expected.encode()):
        raise InvalidCursor()
    try:
        version, created_at, request_id = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        if version != CURSOR_VERSION or not isinstance(request_id, str):
            raise ValueError
        return datetime.fromisoformat(created_at), request_id
    except (ValueError, TypeError):
        raise InvalidCursor() from None


async def fold(conn: AsyncConnection[Any], text: str) -> str:
    """The search key of `text`, by the database's own folding rule."""
    cur = await conn.execute("SELECT search_fold(%s) AS folded", (text,))
    row = await cur.fetchone()
    return str(row["folded"]) if row and row["folded"] is not None else ""


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def where_clause(conn: AsyncConnection[Any], flt: RequestFilter) -> tuple[sql.Composable, dict[str, Any]]:
    """SQL condition and parameters of a filter (the pattern is a plain value so the planner sees it)."""
    parts: list[sql.Composable] = [sql.SQL("TRUE")]
    params: dict[str, Any] = {}
    if flt.q:
        params["pattern"] = "%" + _like_escape(await fold(conn, flt.q)) + "%"
        parts.append(sql.SQL("search_key LIKE %(pattern)s"))
    if flt.status:
        params["status"] = flt.status
        parts.append(sql.SQL("status = %(status)s"))
    if flt.actor:
        params["actor"] = flt.actor
        parts.append(sql.SQL("actor = %(actor)s"))
    if flt.since:
        params["since"] = flt.since
        parts.append(sql.SQL("created_at >= %(since)s"))
    if flt.until:
        params["until"] = flt.until
        parts.append(sql.SQL("created_at <= %(until)s"))
    return sql.SQL(" AND ").join(parts), params


REQUEST_COLUMNS = ("id, status, mode, fallback, fallback_reason, attempts, error_code, error, email, full_name, actor,"
                   " user_id, trace_id, created_at, updated_at")


def request_view(r: Mapping[str, Any]) -> dict[str, Any]:
    """One request as the admin listing shows it (the address is shown: admins need to recognise it)."""
    return {"request_id": r["id"], "status": r["status"], "mode": r["mode"], "email": r["email"],
            "full_name": r["full_name"], "actor": r["actor"], "attempts": r["attempts"],
            "created_at": r["created_at"].isoformat(), "updated_at": r["updated_at"].isoformat(),
            "fallback": r["fallback"], "fallback_reason": r["fallback_reason"], "error_code": r["error_code"],
            "error": r["error"], "user_id": str(r["user_id"]) if r["user_id"] else None}


RECENT_WINDOW = 2000
# The LIKE pattern, folded and escaped by immutable functions: the planner computes it once, as a constant.
_PATTERN = ("'%%' || replace(replace(replace(search_fold(%(q)s), '\\', '\\\\'), '%%', '\\%%'), '_', '\\_')"
            " || '%%'")


async def search_requests(deps: Deps, flt: RequestFilter, *, limit: int = DEFAULT_LIMIT,
                          cursor: str | None = None) -> dict[str, Any]:
    """`{items, next_cursor}`, newest first; next_cursor is null on the last page.

    With `q`, two plans in one statement, because PostgreSQL's estimate for `LIKE '%...%'` can be off by 1000x
    either way and a wrong guess costs seconds at a million rows (walking the time index through every row for a
    rare pattern, or sorting every row of a common one): first the newest RECENT_WINDOW requests (of the other
    filters) are searched; when that fills the page, those are exactly the newest matches. Only otherwise (a
    one-time filter) the trigram index answers, ordered by an expression the time index cannot serve, so the
    planner cannot choose the walk.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise _bad("limit", f"1-{MAX_LIMIT}")
    after = decode_cursor(deps, cursor) if cursor else None
    async with db.connection(deps.pool) as conn:
        where, params = await where_clause(conn, RequestFilter(None, flt.status, flt.actor, flt.since, flt.until))
        if after is not None:
            where = sql.SQL("{} AND (created_at, id) < (%(after_t)s, %(after_id)s)").format(where)
            params.update(after_t=after[0], after_id=after[1])
        params["limit"] = limit + 1
        columns = sql.SQL(REQUEST_COLUMNS)
        if not flt.q:
            query = sql.SQL("SELECT {} FROM creation_requests WHERE {} ORDER BY created_at DESC, id DESC"
                            " LIMIT %(limit)s").format(columns, where)
        else:
            params.update(q=flt.q, window=RECENT_WINDOW)
            query = sql.SQL(
                "WITH recent AS MATERIALIZED ("
                "  SELECT {columns} FROM (SELECT {columns}, search_key FROM creation_requests WHERE {where}"
                "   ORDER BY created_at DESC, id DESC LIMIT %(window)s) AS newest"
                "  WHERE search_key LIKE {pattern} ORDER BY created_at DESC, id DESC LIMIT %(limit)s)"
                " SELECT * FROM ("
                "  SELECT * FROM recent WHERE (SELECT count(*) FROM recent) >= %(limit)s"
                "  UNION ALL"
                "  (SELECT {columns} FROM creation_requests WHERE {where} AND search_key LIKE {pattern}"
                "   AND (SELECT count(*) FROM recent) < %(limit)s"
                "   ORDER BY created_at + interval '0 s' DESC, id DESC LIMIT %(limit)s)) AS found"
                " ORDER BY created_at DESC, id DESC").format(columns=columns, where=where, pattern=sql.SQL(_PATTERN))
        cur = await conn.execute(query, params, prepare=False)
        rows = await cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(deps, rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
    return {"items": [request_view(r) for r in rows], "next_cursor": next_cursor}
