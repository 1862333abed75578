"""PostgreSQL-side faults for tests: a BEFORE INSERT trigger that fails or slows chosen rows, on the real server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg


@contextlib.contextmanager
def before_insert(db: psycopg.Connection[Any], table: str, body: str) -> Iterator[None]:
    """While open, every INSERT into `table` first runs `body` (PL/pgSQL, the row is NEW: RAISE to refuse it,
    PERFORM pg_sleep(...) to slow it). Dropped on exit."""
    name = f"test_trap_{table}"
    db.execute(f"""
        CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            {body}
            RETURN NEW;
        END $$;
        DROP TRIGGER IF EXISTS {name} ON {table};
        CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {name}();
    """)
    try:
        yield
    finally:
        db.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}; DROP FUNCTION IF EXISTS {name}()")
