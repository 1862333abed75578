"""What every case gets: the stack, settings, tokens, started processes, and the helpers cases share."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
import redis.asyncio as aioredis
from bullmq import Queue
from psycopg.rows import dict_row

from bench.procs import FunctionServer, Registry
from infra.manifest import load_manifest
from shared.bootstrap import Deps, open_deps
from shared.core.auth import Principal, Role, issue_token
from shared.core.settings import Settings
from shared.creation.creation import create_user_request
from shared.creation.models import CreateUserCommand
from tests.support.stack import Stack

TABLES = ("users, creation_requests, creation_attempts, email_outbox, password_setup_tokens, system_health_logs,"
          " bulk_batches")
BENCH = Path(__file__).resolve().parent


@dataclass
class Ctx:
    """Shared state of one `python -m bench` run."""

    quick: bool
    stack: Stack
    log_dir: Path
    registry: Registry = field(default_factory=Registry)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    _deps: Deps | None = None

    def __post_init__(self) -> None:
        # The request-path cases measure the queue path with no consumer running: `NO_CONSUMER_FALLBACK=false`
        # (a real setting) keeps it on the queue, instead of any pretend heartbeat. Consumer cases run real ones.
        self.env = {**self.stack.env(), "NO_CONSUMER_FALLBACK": "false"}
        self.settings = Settings(**self.env)  # pydantic parses the strings
        self.tokens = {
            "sales": issue_token(self.settings, role=Role.SALES_MANAGER, subject="bench-sales"),
            "admin": issue_token(self.settings, role=Role.ADMIN, subject="bench-admin"),
        }

    def n(self, full: Any, quick: Any) -> Any:
        """The full-run or the quick-run value."""
        return quick if self.quick else full

    def progress(self, message: str) -> None:
        print(f"[bench] {time.strftime('%H:%M:%S')} {message}", flush=True)

    # -- database and queue state ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def db(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A plain autocommit connection to the run's database."""
        async with await psycopg.AsyncConnection.connect(self.stack.database_url, autocommit=True,
                                                         row_factory=dict_row) as conn:
            yield conn

    def wipe(self) -> None:
        """Empty every table, put the switch back to async_queue, delete the run's queue keys."""
        with psycopg.connect(self.stack.database_url, autocommit=True) as conn:
            # A server may still be finishing requests whose client (the load generator) has gone: wait for
            # them, or TRUNCATE's exclusive locks deadlock with their transactions.
            deadline = time.monotonic() + 15
            while True:
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                   " AND pid <> pg_backend_pid() AND state <> 'idle'").fetchone()
                if not row or row[0] == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            for attempt in range(5):
                try:
                    with conn.transaction():
                        conn.execute("SET LOCAL lock_timeout = '5s'")
                        conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
                    break
                except (psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable):
                    if attempt == 4:
                        raise
                    time.sleep(0.2)
            conn.execute("UPDATE system_config SET value = 'async_queue', version = version + 1,"
                         " reason = 'bench reset', updated_by = 'bench' WHERE key = 'traffic_mode'")
        forget_keys(self.stack.redis_url, self.stack.queue_prefix)

    def set_mode_sql(self, mode: str) -> None:
        """Set the kill switch directly in the database (instances see it within MODE_CACHE_TTL_S)."""
        with psycopg.connect(self.stack.database_url, autocommit=True) as conn:
            conn.execute("UPDATE system_config SET value = %s, version = version + 1, reason = 'bench',"
                         " updated_by = 'bench' WHERE key = 'traffic_mode'", (mode,))

    def queue(self, name: str | None = None) -> Queue:
        """A bullmq Queue (the run's queue by default) on a fresh client: `await queue.close()` closes both."""
        client = aioredis.Redis.from_url(self.stack.redis_url, decode_responses=True)
        return Queue(name or self.settings.queue_name, {"connection": client, "prefix": self.stack.queue_prefix,
                                                        "skipVersionCheck": True})

    # -- processes -----------------------------------------------------------------------------------------------

    def function(self, name: str, *, env: dict[str, str] | None = None, instance: str = "") -> FunctionServer:
        """A manifest function's server, registered for stopping (not started yet: call .start())."""
        spec = load_manifest()[name]
        return self.registry.add(FunctionServer(spec.target, spec.source_path, {**self.env, **(env or {})},
                                                self.log_dir, instance=instance))

    def bench_function(self, target: str, *, instance: str = "") -> FunctionServer:
        """One of the suite's own functions (bench/<target>.py)."""
        return self.registry.add(FunctionServer(target, BENCH / f"{target}.py", self.env, self.log_dir,
                                                instance=instance))

    async def create_user_server(self) -> FunctionServer:
        """The create_user process shared by the request-path cases (started once)."""
        if "create_user" not in self.shared:
            self.shared["create_user"] = await self.function("create_user", instance="create_user-main").start()
        server: FunctionServer = self.shared["create_user"]
        return server

    # -- in-process use case -------------------------------------------------------------------------------------

    async def deps(self) -> Deps:
        """In-process dependencies for creating requests through the use case (as a create instance would)."""
        if self._deps is None:
            self._deps = await open_deps(self.settings, role="bench")
            await self._deps.pool.wait(timeout=10)
        return self._deps

    async def create_requests(self, count: int, *, concurrency: int = 8,
                              on_request: Callable[[str], None] | None = None) -> list[str]:
        """`count` creation requests through `create_user_request` (shared.creation); every answer must be 202."""
        deps = await self.deps()
        deps.mode_cache.invalidate()
        principal = Principal(subject="bench-sales", role=Role.SALES_MANAGER)
        tag = uuid.uuid4().hex[:8]
        ids: list[str] = []
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < count:
                i = next_index
                next_index += 1
                command = CreateUserCommand(email=f"pre-{tag}-{i}@example.com", full_name=f"Bench User {i}")
                answer = await create_user_request(deps, principal, command, None)
                if answer.status != 202:
                    raise RuntimeError(f"expected 202 while pre-queueing, got {answer.status}: {answer.body}")
                ids.append(answer.body["request_id"])
                if on_request is not None:
                    on_request(answer.body["request_id"])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ids

    async def aclose(self) -> None:
        if self._deps is not None:
            await self._deps.aclose()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def forget_keys(redis_url: str, prefix: str) -> None:
    """Delete the keys under this run's queue prefix (and nothing else)."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
    finally:
        client.close()
