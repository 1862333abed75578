"""Browser tests of the System Health panel: Debian's Chromium driven by Playwright's sync API.

The system runs as a user runs it (`invoke dev` on a free port, every function behind the gateway) against this
session's PostgreSQL and SES emulator, but with a Redis the tests own, so a test can stop and start it.

Why the sync API in plain test functions works with pytest-asyncio's auto mode and session loop: that loop only
runs while an async test or fixture runs, and nothing in this folder is async. Playwright's sync API then finds no
running loop and drives its own (in a greenlet), and it is stopped at module teardown, before any later async test.

Chromium and Playwright are not Python dependencies of the project: `.ci/run` installs them with
`apt-get install -y chromium` and `python3 -m pip install playwright` (never `playwright install`: no browser is
downloaded). When they are missing, these tests fail and say so; they never pass silently.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from local.processes import find_free_port
from local.redis_server import RedisServer
from shared.core.auth import Role, issue_token
from shared.core.settings import Settings
from tests.conftest import TABLES
from tests.support.stack import TEST_JWT_SECRET, Stack

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
INSTALL_HINT = ("the browser tests need Debian's Chromium at /usr/bin/chromium and the `playwright` Python package; "
                ".ci/run installs them (apt-get update && apt-get install -y chromium; "
                "python3 -m pip install playwright). Never run `playwright install`: no browser is downloaded.")

# Records every Content-Security-Policy violation of the page (the panel must need no inline script or style).
CSP_PROBE = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.__cspViolations.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline'));
});
"""


# ---------------------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the module (a fresh context per page keeps tests apart)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: {INSTALL_HINT}", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the playwright package is missing: {INSTALL_HINT}", pytrace=False)
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
                                             timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def new_page(chromium: Any) -> Iterator[Callable[..., Any]]:
    """new_page(width=1280, height=800) -> a page in its own context (own sessionStorage).

    After the test: no uncaught script error and no CSP violation happened on any of them.
    """
    opened: list[tuple[Any, Any, list[str]]] = []

    def make(width: int = 1280, height: int = 800) -> Any:
        context = chromium.new_context(viewport={"width": width, "height": height}, locale="en-GB",
                                       timezone_id="UTC")
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.add_init_script(CSP_PROBE)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        opened.append((context, page, errors))
        return page

    yield make
    problems: list[str] = []
    for context, page, errors in opened:
        problems += errors
        try:
            problems += [f"CSP violation: {v}" for v in page.evaluate("window.__cspViolations || []")]
        except Exception as exc:  # the page may be gone if the test failed
            problems.append(f"could not read the page ({type(exc).__name__})")
        context.close()
    assert not problems, problems


# ---------------------------------------------------------------------------------------------------- system


@dataclass
class PanelSystem:
    """The running `invoke dev` (its gateway URL) and what the tests need to talk to it."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    redis: RedisServer
    database_url: str
    tokens: dict[str, str]
    http: httpx.Client

    def panel_url(self, *, token: str | None = None, refresh: float | None = 1) -> str:
        """The page; `refresh` (seconds) is the panel's `?refresh=` auto-refresh interval."""
        url = f"{self.url}/admin/system-health"
        if refresh is not None:
            url += f"?refresh={refresh:g}"
        if token is not None:
            url += f"#token={token}"
        return url

    def call(self, method: str, path: str, role: str = "admin", *, timeout: float = 20, **kwargs: Any
             ) -> httpx.Response:
        """One API call; retried while the gateway says a function is (re)starting (503) or cannot be reached."""
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.tokens[role]}", **kwargs.pop("headers", {})}
        while True:
            try:
                response = self.http.request(method, path, headers=headers, **kwargs)
                if response.status_code != 503 or time.monotonic() > deadline:
                    return response
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.3)

    def mode(self) -> dict[str, Any]:
        response = self.call("GET", "/api/admin/system/mode")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def create_user(self, email: str, name: str = "Panel Test") -> httpx.Response:
        """POST /api/users as a sales manager (an Idempotency-Key makes a retried call safe)."""
        return self.call("POST", "/api/users", "sales_manager", json={"email": email, "full_name": name},
                         headers={"Idempotency-Key": f"panel-{email}"})

    def sql(self, statement: str, params: tuple[Any, ...] | None = None) -> list[dict[str, Any]]:
        with psycopg.connect(self.database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []


def wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, "invoke dev exited:\n" + log.read_text(errors="replace")[-4000:]
        assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n" + log.read_text()[-4000:]
        time.sleep(0.2)


def stop_by_pid(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM `invoke dev` (it stops its own children), then make sure none of them is left, by PID."""
    if proc.poll() is not None:
        return
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    _gone, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        child.kill()
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def panel_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module only: the Redis test stops and starts it (same port)."""
    server = RedisServer(tmp_path_factory.mktemp("panel-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def panel_system(stack: Stack, panel_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory,
                 chromium: Any) -> Iterator[PanelSystem]:
    """`invoke dev` on a free port of 127.0.0.1, on this session's PostgreSQL/SES and the module's Redis.

    JOB_ATTEMPTS=1: a failing job fails at once (no retries), so the failed-requests test need not wait.
    """
    log = tmp_path_factory.mktemp("panel-dev") / "dev.log"
    port = find_free_port()
    env = {**os.environ, **stack.env(), "APP_ENV": "development", "AUTH_JWT_SECRET": TEST_JWT_SECRET,
           "REDIS_URL": panel_redis.url, "JOB_ATTEMPTS": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "invoke", "dev", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    settings = Settings(APP_ENV="development", DATABASE_URL=stack.database_url, REDIS_URL=panel_redis.url,
                        AUTH_JWT_SECRET=TEST_JWT_SECRET)
    tokens = {
        "admin": issue_token(settings, role=Role.ADMIN, subject="panel-admin"),
        "other_admin": issue_token(settings, role=Role.ADMIN, subject="other-admin"),
        "sales_manager": issue_token(settings, role=Role.SALES_MANAGER, subject="panel-sales"),
        "other_sales": issue_token(settings, role=Role.SALES_MANAGER, subject="other-sales"),
        "viewer": issue_token(settings, role=Role.VIEWER, subject="panel-viewer"),
    }
    try:
        wait_for_line(log, "READY", proc, timeout=90)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield PanelSystem(url=f"http://127.0.0.1:{port}", proc=proc, log=log, redis=panel_redis,
                              database_url=stack.database_url, tokens=tokens, http=http)
    finally:
        stop_by_pid(proc)


@pytest.fixture
def system(panel_system: PanelSystem) -> Iterator[PanelSystem]:
    """The running system with a clean database, the switch on async_queue (version 1) and Redis running."""
    assert panel_system.proc.poll() is None, "invoke dev died:\n" + panel_system.log.read_text()[-4000:]
    if not panel_system.redis.is_running():
        panel_system.redis.start()
    panel_system.sql("DROP TRIGGER IF EXISTS panel_trap ON users")
    panel_system.sql(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    panel_system.sql("UPDATE system_config SET value = 'async_queue', version = 1, reason = 'browser test reset',"
                     " updated_by = 'tests', updated_at = now(), revert_at = NULL, revert_to = NULL"
                     " WHERE key = 'traffic_mode'")
    time.sleep(1.2)  # every function instance caches the switch for MODE_CACHE_TTL_S (1 s)
    yield panel_system
    panel_system.sql("DROP TRIGGER IF EXISTS panel_trap ON users; DROP FUNCTION IF EXISTS panel_trap()")


def screenshot(page: Any, name: str, *, full_page: bool = True) -> Path:
    """Save docs/screenshots/<name> (the README/docs show them)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    return path
