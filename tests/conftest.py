"""Session-wide real servers (PostgreSQL, Redis, moto SES) and per-test clean state."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from functions_framework.aio import create_asgi_app

from infra.manifest import load_manifest
from shared import bootstrap
from shared.bootstrap import Deps, open_deps
from shared.core.auth import Role, issue_token
from shared.core.settings import Settings
from shared.creation.mailer import Mailer
from shared.creation.traffic import ModeCache
from tests.support.processes import ConsumerProcess
from tests.support.proxy import FaultProxy
from tests.support.stack import TEST_JWT_SECRET, TEST_LIMITS, Stack, running_stack

TABLES = ("users, creation_requests, creation_attempts, email_outbox, password_setup_tokens, system_health_logs,"
          " bulk_batches, audit_log, creation_retries, runtime_limits")


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="provisioner-tests-") as tmp, running_stack(Path(tmp)) as running:
        yield running


def make_settings(stack: Stack, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "APP_ENV": "test",
        "DATABASE_URL": stack.database_url,
        "REDIS_URL": stack.redis_url,
        "QUEUE_PREFIX": stack.queue_prefix,
        "AUTH_JWT_SECRET": TEST_JWT_SECRET,
        "AWS_ENDPOINT_URL_SES": stack.ses_url,
        "BREAKER_OPEN_S": 0.5,
        "BREAKER_PROBE_INTERVAL_S": 0.1,
        **TEST_LIMITS,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def settings(stack: Stack) -> Settings:
    return make_settings(stack)


DepsFactory = Callable[..., Awaitable[Deps]]


@pytest.fixture
async def deps_factory(stack: Stack) -> AsyncIterator[DepsFactory]:
    """Build extra, independent Deps (another 'instance'); closed after the test."""
    made: list[Deps] = []

    async def factory(mailer: Mailer | None = None, **overrides: Any) -> Deps:
        deps = await open_deps(make_settings(stack, **overrides), role="test-instance",
                               mailer=mailer or Mailer(make_settings(stack), client=stack.ses.client()))
        made.append(deps)
        return deps

    yield factory
    for deps in made:
        await deps.aclose()


@pytest.fixture(scope="session")
async def session_deps(stack: Stack) -> AsyncIterator[Deps]:
    """The request-path instance. It queues whether or not a consumer runs (`NO_CONSUMER_FALLBACK=false`, a real
    setting): request-path tests check what is queued, and a consumer would race them for the job. The production
    default (no live consumer -> sync fallback) is what `deps_factory` instances get, with real consumers; see
    tests/integration/test_consumer.py::test_no_live_consumer_falls_back_and_a_new_consumer_restores_the_queue."""
    settings = make_settings(stack, NO_CONSUMER_FALLBACK=False)
    deps = await open_deps(settings, role="test", mailer=Mailer(settings, client=stack.ses.client()))
    await deps.pool.wait(timeout=10)
    yield deps
    await deps.aclose()


def _wipe(stack: Stack) -> None:
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
        conn.execute("UPDATE system_config SET value = 'async_queue', version = 1, reason = 'test reset',"
                     " updated_by = 'tests', revert_at = NULL, revert_to = NULL WHERE key = 'traffic_mode'")
    client = redis.Redis.from_url(stack.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{stack.queue_prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def use_deps(monkeypatch: pytest.MonkeyPatch, deps: Deps) -> None:
    """Make `deps` what the functions' `get_deps()` returns for the rest of this test (undone afterwards): the
    composition root's per-process cache, set from outside instead of through a test-only hook in shared/."""
    monkeypatch.setattr(bootstrap, "_deps", deps)


@pytest.fixture
async def deps(session_deps: Deps, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Deps]:
    """Clean database and queue, a closed breaker and a fresh mode cache, used by the functions."""
    _wipe(stack)
    await session_deps.breaker.close()
    await session_deps.mode_cache.aclose()
    session_deps.mode_cache = ModeCache(session_deps.pool, session_deps.settings.mode_cache_ttl_s)
    use_deps(monkeypatch, session_deps)
    yield session_deps


@pytest.fixture
def consumers() -> Iterator[list[ConsumerProcess]]:
    """Real consumer processes a test starts (`start_consumer(consumers, ...)`); stopped by PID afterwards."""
    started: list[ConsumerProcess] = []
    yield started
    for process in started:
        process.stop()


@pytest.fixture
async def proxy(stack: Stack) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of this run's Redis (`proxy.url`; `proxy.set_mode(...)`)."""
    host, port = stack.redis_url.split("//", 1)[1].split("/")[0].rsplit(":", 1)
    fault_proxy = await FaultProxy(host, int(port)).start()
    yield fault_proxy
    await fault_proxy.stop()


@pytest.fixture(scope="session")
def tokens(settings: Settings) -> dict[str, str]:
    return {
        "admin": issue_token(settings, role=Role.ADMIN, subject="admin-1"),
        "sales_manager": issue_token(settings, role=Role.SALES_MANAGER, subject="sales-1"),
        "other_sales": issue_token(settings, role=Role.SALES_MANAGER, subject="sales-2"),
        "viewer": issue_token(settings, role=Role.VIEWER, subject="viewer-1"),
    }


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


_apps: dict[str, Any] = {}


def function_app(name: str) -> Any:
    """The functions-framework ASGI app of one manifest function (loaded once per session)."""
    if name not in _apps:
        spec = load_manifest()[name]
        _apps[name] = create_asgi_app(spec.target, str(spec.source_path))
    return _apps[name]


@pytest.fixture
async def call(deps: Deps) -> AsyncIterator[Callable[..., Awaitable[httpx.Response]]]:
    """call(function_name, method, path, **httpx kwargs) -> response, in-process through functions-framework."""
    clients: dict[str, httpx.AsyncClient] = {}

    async def _call(name: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if name not in clients:
            clients[name] = httpx.AsyncClient(transport=httpx.ASGITransport(app=function_app(name)),
                                              base_url="http://function")
        return await clients[name].request(method, path, **kwargs)

    yield _call
    for client in clients.values():
        await client.aclose()


@pytest.fixture
def db(stack: Stack) -> Iterator[psycopg.Connection[Any]]:
    """A plain connection to look at what the system wrote."""
    with psycopg.connect(stack.database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        yield conn


async def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy (awaiting it when it is a coroutine); fail after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")


FIGURES: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[..., None]:
    """figures(name=value, ...): measured figures printed at the end of the run."""

    def record(**values: Any) -> None:
        FIGURES.append((request.node.name, values))

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("measured figures")
    for name, values in FIGURES:
        shown = ", ".join(f"{k}={round(v, 3) if isinstance(v, float) else v}" for k, v in values.items())
        terminalreporter.write_line(f"{name}: {shown}")
