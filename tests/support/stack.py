"""The real servers a test session uses: its own PostgreSQL, Redis and SES emulator, or the configured ones.

With DATABASE_URL set, a throwaway database is created on that server (and dropped at the end; nothing
else is touched). With REDIS_URL set, a per-run queue prefix keeps the run's keys apart.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from infra.manifest import MIGRATIONS_DIR
from local.postgres_server import PostgresServer
from local.redis_server import RedisServer
from local.ses_emulator import SesEmulator
from shared.core.db import apply_migrations

TEST_JWT_SECRET = "test-secret-" + "x" * 40
# Many tests create hundreds of users from one caller within seconds: the per-caller quota and the email rate
# are lifted for them; the tests of those two limits (tests/functions/test_quota.py) set them low again.
TEST_LIMITS = {"CREATE_QUOTA_PER_MINUTE": "100000", "EMAIL_RATE_PER_S": "10000"}


@dataclass
class Stack:
    """URLs of the real servers of this run."""

    database_url: str
    redis_url: str
    ses_url: str
    queue_prefix: str
    redis_is_ours: bool
    redis: RedisServer | None
    ses: SesEmulator

    def env(self) -> dict[str, str]:
        """Environment for a function or consumer process using this stack."""
        return {
            "APP_ENV": "test",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "QUEUE_PREFIX": self.queue_prefix,
            "AUTH_JWT_SECRET": TEST_JWT_SECRET,
            "AWS_ENDPOINT_URL_SES": self.ses_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            **TEST_LIMITS,
        }


def _database_on(server_url: str) -> Iterator[str]:
    name = f"provisioner_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
    try:
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def running_stack(workdir: Path) -> Iterator[Stack]:
    """Start (or attach to) the servers, apply the migrations, yield, then stop what was started."""
    with contextlib.ExitStack() as stack:
        configured_db = os.environ.get("DATABASE_URL")
        if configured_db:
            database_url = stack.enter_context(contextlib.contextmanager(_database_on)(configured_db))
        else:
            pg = stack.enter_context(PostgresServer(workdir / "pg", durable=False))
            database_url = pg.create_database("provisioner_test")
        apply_migrations(database_url, MIGRATIONS_DIR)

        configured_redis = os.environ.get("REDIS_URL")
        redis_server = None
        if configured_redis:
            redis_url = configured_redis
        else:
            redis_server = stack.enter_context(RedisServer(workdir / "redis"))
            redis_url = redis_server.url
        ses = stack.enter_context(SesEmulator())
        yield Stack(database_url=database_url, redis_url=redis_url, ses_url=ses.url,
                    queue_prefix=f"bull-test-{uuid.uuid4().hex[:8]}" if configured_redis else "bull",
                    redis_is_ours=redis_server is not None, redis=redis_server, ses=ses)
