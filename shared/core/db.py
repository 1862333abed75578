"""PostgreSQL access: the connection pool, error mapping and the migration runner."""

from __future__ import annotations

import contextlib
import logging
import select
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from shared.core.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

MIGRATIONS_LOCK_ID = 7_300_001  # pg_advisory_lock key: one migration runner at a time


def with_statement_timeout(dsn: str, timeout_ms: int) -> dict[str, str]:
    """The libpq `options` that set `statement_timeout` on every connection (next to any the DSN already has);
    {} for 0 (no limit)."""
    if not timeout_ms:
        return {}
    given = psycopg.conninfo.conninfo_to_dict(dsn).get("options") or ""
    return {"options": f"{given} -c statement_timeout={int(timeout_ms)}".strip()}


def make_pool(dsn: str, *, min_size: int, max_size: int, timeout_s: float, name: str,
              statement_timeout_ms: int = 0) -> AsyncConnectionPool[Any]:
    """A pool that is not opened yet: the owner opens it (`await pool.open(wait=False)`) and closes it.

    Connections are in autocommit mode: a statement commits alone, `async with conn.transaction()` groups.
    `statement_timeout_ms` bounds every statement of its connections (the server cancels it: 57014).
    """
    return AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout_s,
        open=False,
        name=name,
        reconnect_timeout=0,  # keep trying to refill the pool for as long as the process lives
        kwargs={"connect_timeout": max(1, int(timeout_s)), "row_factory": dict_row,
                "application_name": name, "autocommit": True, **with_statement_timeout(dsn, statement_timeout_ms)},
    )


def readable_now(conn: AsyncConnection[Any]) -> bool | None:
    """Whether the server has sent something not read yet, by a zero-timeout `select()` on the connection's
    socket: no round trip, a microsecond. None when the socket cannot be looked at (closed, broken)."""
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return None
    return bool(readable)


def _looks_dead(conn: AsyncConnection[Any]) -> bool:
    """True when an idle connection has something to read: on an idle connection the server only speaks to say
    it is going away (a terminated backend sends FATAL 57P01, then EOF; a killed server leaves EOF)."""
    return conn.closed or conn.broken or readable_now(conn) is not False


@contextlib.asynccontextmanager
async def connection(pool: AsyncConnectionPool[Any]) -> AsyncIterator[AsyncConnection[DictRow]]:
    """Borrow a live connection; an unreachable database becomes `DatabaseUnavailable` (503).

    Each borrowed connection is looked at first, without a round trip (`_looks_dead`). A dead one (PostgreSQL
    restarted, backend terminated) is closed and the next one tried at once, so a restart costs no failed
    request. (The pool's own `check=` sends a query per borrow, a round trip, and backs off a second per dead
    connection, longer than a request may wait.)
    """
    deadline = time.monotonic() + (pool.timeout or 5.0)
    conn = None
    for _ in range(pool.max_size + 1):
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise PoolTimeout("no live connection in time")
            candidate = await pool.getconn(timeout=remaining)
        except (PoolTimeout, psycopg.OperationalError) as exc:
            log.warning("database unavailable: %s", type(exc).__name__)
            raise DatabaseUnavailable() from exc
        if _looks_dead(candidate):
            await candidate.close()
            await pool.putconn(candidate)
            continue
        conn = candidate
        break
    if conn is None:
        raise DatabaseUnavailable()
    try:
        yield cast(AsyncConnection[DictRow], conn)
    except psycopg.OperationalError as exc:
        log.warning("database connection lost: %s", type(exc).__name__)
        raise DatabaseUnavailable() from exc
    finally:
        await pool.putconn(conn)


def apply_migrations(dsn: str, directory: Path) -> list[str]:
    """Apply every `NNNN_name.sql` of `directory` not applied yet, each in its own transaction.

    Idempotent and safe to run concurrently (an advisory lock serialises runners). Returns the
    versions applied by this call.
    """
    applied: list[str] = []
    files = sorted(p for p in directory.glob("*.sql") if p.name[:4].isdigit())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATIONS_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for path in files:
                version = path.stem
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql.SQL(path.read_text()))  # trusted file from the repo
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                applied.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATIONS_LOCK_ID,))
    return applied
