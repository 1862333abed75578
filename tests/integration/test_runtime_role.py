"""Migration 0006: the runtime role the deployed functions and consumers connect as may change rows, never the
schema; the role the migrations run as (the owner) keeps the schema. Real PostgreSQL, real function calls."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from infra.manifest import MIGRATIONS_DIR
from infra.render import DeployConfig
from shared.core.db import apply_migrations
from shared.operations.maintenance import run_cleanup
from tests.conftest import DepsFactory, auth, function_app, use_deps
from tests.support.stack import Stack

RUNTIME = DeployConfig(project="p").db_runtime_user  # the role the rendering connects the runtime as


def as_role(dsn: str, role: str, **overrides: str) -> str:
    """The same database, signed in as `role` (the test cluster trusts loopback connections)."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params.update(user=role, **overrides)
    host = params.get("host", "127.0.0.1")
    return f"postgresql://{role}@{host}:{params.get('port', 5432)}/{params['dbname']}"


@pytest.fixture
def fresh_database(stack: Stack) -> Iterator[str]:
    """A new, empty database on the test cluster (the runtime role already exists there: roles are
    cluster-wide), dropped afterwards."""
    name = f"runtime_role_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(stack.database_url, dbname=name)
    finally:
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_the_runtime_role_may_change_rows_of_every_table_and_nothing_else(stack: Stack) -> None:
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        role = conn.execute("SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolcanlogin"
                            " FROM pg_roles WHERE rolname = %s", (RUNTIME,)).fetchone()
        assert role == (False, False, False, False, True)
        tables = [row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        owners = {row[0] for row in conn.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")}
    assert "users" in tables and "creation_requests" in tables and "audit_log" in tables
    assert RUNTIME not in owners  # the schema belongs to whoever ran the migrations

    with psycopg.connect(as_role(stack.database_url, RUNTIME), autocommit=True) as conn:
        for table in tables:
            rights = conn.execute(
                "SELECT has_table_privilege(%(t)s, 'SELECT'), has_table_privilege(%(t)s, 'INSERT'),"
                " has_table_privilege(%(t)s, 'UPDATE'), has_table_privilege(%(t)s, 'DELETE'),"
                " has_table_privilege(%(t)s, 'TRUNCATE'), has_table_privilege(%(t)s, 'REFERENCES'),"
                " has_table_privilege(%(t)s, 'TRIGGER')", {"t": f"public.{table}"}).fetchone()
            # Read-only: the migrations' record. Append-only: the audit trail (migration 0016).
            expected = {"schema_migrations": (True, False, False, False),
                        "audit_log": (True, True, False, False)}.get(table, (True, True, True, True))
            assert rights == (*expected, False, False, False), table
        for statement in ("CREATE TABLE sneaky (id int)", "DROP TABLE users", "ALTER TABLE users ADD COLUMN x int",
                          "TRUNCATE system_health_logs",
                          "CREATE INDEX sneaky ON users (id)", "CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql"
                          " AS 'SELECT 1'", "CREATE ROLE sneaky", "CREATE SCHEMA sneaky",
                          "DELETE FROM schema_migrations"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_the_migration_is_idempotent_and_covers_tables_of_later_migrations(fresh_database: str) -> None:
    applied = apply_migrations(fresh_database, MIGRATIONS_DIR)  # the role exists already: the DO block skips it
    assert any(version.startswith("0006") for version in applied)
    assert apply_migrations(fresh_database, MIGRATIONS_DIR) == []
    with psycopg.connect(fresh_database, autocommit=True) as conn:  # a later migration, run by the owner
        conn.execute("CREATE TABLE later_table (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text)")
    with psycopg.connect(as_role(fresh_database, RUNTIME), autocommit=True) as conn:
        conn.execute("INSERT INTO later_table (note) VALUES ('a')")
        conn.execute("UPDATE later_table SET note = 'b'")
        assert conn.execute("SELECT note FROM later_table").fetchall() == [("b",)]
        conn.execute("DELETE FROM later_table")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DROP TABLE later_table")


async def test_the_functions_serve_both_creation_paths_connected_as_the_runtime_role(
        monkeypatch: pytest.MonkeyPatch, stack: Stack, deps: Any, deps_factory: DepsFactory,
        tokens: dict[str, str]) -> None:
    # Queueing (no consumer needed for the 202), then the production default with no live consumer: sync.
    runtime = await deps_factory(DATABASE_URL=as_role(stack.database_url, RUNTIME), NO_CONSUMER_FALLBACK=False)
    direct_runtime = await deps_factory(DATABASE_URL=as_role(stack.database_url, RUNTIME))
    await runtime.pool.wait(timeout=10)
    use_deps(monkeypatch, runtime)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=function_app("create_user")),
                                     base_url="http://function") as client:
            queued = await client.post("/api/users", headers=auth(tokens["sales_manager"]),
                                       json={"email": "runtime.queued@example.com", "full_name": "Run Time"})
            assert queued.status_code == 202, queued.text
            use_deps(monkeypatch, direct_runtime)  # no live consumer: the sync path provisions at once
            direct = await client.post("/api/users", headers=auth(tokens["sales_manager"]),
                                       json={"email": "runtime.direct@example.com", "full_name": "Run Time"})
            assert direct.status_code == 201, direct.text
        async with runtime.pool.connection() as conn:
            cursor = await conn.execute("SELECT current_user AS who, (SELECT count(*) FROM creation_requests) AS asked,"
                                        " (SELECT count(*) FROM users) AS made")
            assert await cursor.fetchone() == {"who": RUNTIME, "asked": 2, "made": 1}
    finally:
        use_deps(monkeypatch, deps)


async def test_the_runtime_role_cannot_rewrite_the_audit_trail_and_prunes_it_only_through_the_function(
        stack: Stack, deps: Any, deps_factory: DepsFactory) -> None:
    with psycopg.connect(stack.database_url, autocommit=True) as owner:
        owner.execute("INSERT INTO audit_log (at, actor, action, reason) VALUES"
                      " (now() - interval '30 days', 'admin-1', 'kept', 'recent'),"
                      " (now() - interval '401 days', 'admin-1', 'past_retention', 'old')")
    with psycopg.connect(as_role(stack.database_url, RUNTIME), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (RUNTIME,)
        conn.execute("INSERT INTO audit_log (actor, action) VALUES ('admin-1', 'appended')")  # adding is its job
        for statement in ("UPDATE audit_log SET reason = 'rewritten'", "UPDATE audit_log SET at = now()"
                          " WHERE action = 'kept'", "DELETE FROM audit_log", "DELETE FROM audit_log WHERE"
                          " action = 'kept'", "TRUNCATE audit_log"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        # The prune takes no retention from its caller: 400 days, whoever calls it.
        with pytest.raises(psycopg.errors.UndefinedFunction):
            conn.execute("SELECT cleanup_audit_log(interval '0 seconds')")
    # The scheduled cleanup, connected as the runtime role, prunes through the SECURITY DEFINER function.
    runtime = await deps_factory(DATABASE_URL=as_role(stack.database_url, RUNTIME))
    answer = await run_cleanup(runtime, actor="scheduler")
    assert answer["audit_deleted"] == 1
    with psycopg.connect(stack.database_url, autocommit=True) as owner:
        rows = owner.execute("SELECT action, reason FROM audit_log ORDER BY id").fetchall()
    assert rows[:2] == [("kept", "recent"), ("appended", None)] and [r[0] for r in rows[2:]] == ["cleanup"]
