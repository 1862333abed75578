"""The System Health panel as an on-call admin uses it, in a real Chromium against `invoke dev`.

Every page is opened with `?refresh=1` (the panel's auto-refresh interval in seconds; 5 by default) so that
"several refresh cycles" take seconds, not a quarter of a minute.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from tests.browser.conftest import INSTALL_HINT, PanelSystem, screenshot

try:
    from playwright.sync_api import expect
except ImportError:  # a clear failure, never a silent pass
    pytest.fail(f"the playwright package is missing: {INSTALL_HINT}", pytrace=False)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

WAIT_MS = 30_000  # a bound for things that need a refresh or two (or a function restarted by a code reload)


def open_panel(page: Any, system: PanelSystem, role: str = "admin", refresh: float = 1) -> Any:
    """Sign in through the URL fragment and wait until the panel shows data."""
    load(page, system.panel_url(token=system.tokens[role], refresh=refresh))
    expect(page.locator("#panel")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#sw-mode")).not_to_have_text("–", timeout=WAIT_MS)
    return page


def load(page: Any, url: str, timeout: float = 60) -> None:
    """page.goto, again while the gateway answers 503 (`invoke dev` restarts the functions on a code change)."""
    deadline = time.monotonic() + timeout
    while (response := page.goto(url)) is None or response.status == 503:
        assert time.monotonic() < deadline, f"{url} kept answering 503 for {timeout} s"
        page.wait_for_timeout(500)
    assert response.status == 200, response.status


def wait_until(predicate: Any, timeout: float, message: str, page: Any = None, interval: float = 0.2) -> Any:
    """Poll; with a page, wait through Playwright so that its events (responses, ...) keep being delivered."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{message} (not within {timeout} s)"
        if page is not None:
            page.wait_for_timeout(interval * 1000)
        else:
            time.sleep(interval)


def count_refreshes(page: Any) -> list[float]:
    """Times at which the page got an answer from the metrics API (one per refresh cycle)."""
    seen: list[float] = []
    page.on("response", lambda r: "/api/admin/system/metrics" in r.url and seen.append(time.monotonic()))
    return seen


# ------------------------------------------------------------------------------------------------ kill switch


def test_kill_switch_cancel_changes_nothing_and_confirm_switches_to_sync(system, new_page):
    page = open_panel(new_page(), system)
    expect(page.locator("#sw-mode")).to_have_text("async_queue")
    dialog = page.locator("#mode-dialog")

    reason = dialog.get_by_label("Reason")
    page.get_by_role("button", name=re.compile("Turn kill switch on")).click()
    expect(dialog).to_be_visible()
    expect(page.get_by_role("heading", name="Switch to sync_direct?")).to_be_visible()
    reason.fill("changed my mind")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert system.mode()["mode"] == "async_queue" and system.mode()["version"] == 1

    page.locator("#switch-btn").click()
    expect(dialog).to_be_visible()
    reason.fill("x")  # too short: refused in the page, nothing sent
    page.locator("#mode-confirm").click()
    expect(page.locator("#mode-error")).to_contain_text("at least 3 characters")
    expect(dialog).to_be_visible()
    assert system.mode()["version"] == 1

    reason.fill("Redis maintenance window (browser test)")
    page.locator("#mode-confirm").click()
    expect(dialog).to_be_hidden()
    switched_at = time.monotonic()
    expect(page.locator("#sw-mode")).to_have_text("sync_direct")
    expect(page.locator("#st-mode")).to_contain_text("sync_direct", timeout=WAIT_MS)
    expect(page.locator("#st-effective")).to_contain_text("manual kill switch", timeout=WAIT_MS)
    expect(page.locator("#sw-last")).to_contain_text("panel-admin")
    expect(page.locator("#sw-last")).to_contain_text("Redis maintenance window (browser test)")
    switch_row = page.locator("#log-list li.level-SWITCH", has_text="mode_switched")
    expect(switch_row).to_have_count(1, timeout=WAIT_MS)
    expect(switch_row).to_contain_text("async_queue -> sync_direct")

    state = wait_until(lambda: (s := system.mode())["version"] == 2 and s, timeout=3, message="version 2")
    assert (state["mode"], state["updated_by"]) == ("sync_direct", "panel-admin")
    assert state["reason"] == "Redis maintenance window (browser test)"
    # Every instance caches the switch for up to MODE_CACHE_TTL_S (1 s): a creation gets 201 within 2 s.
    statuses = []
    for i in range(40):
        response = system.create_user(f"panel-sync-{i}@example.com")
        statuses.append(response.status_code)
        if response.status_code == 201:
            break
        assert response.status_code == 202, response.text
        assert time.monotonic() - switched_at < 2.5, statuses
        time.sleep(0.2)
    assert statuses[-1] == 201 and response.json()["mode"] == "sync_direct", statuses


def test_a_stale_switch_is_refused_and_says_who_changed_it(system, new_page):
    page = open_panel(new_page(), system)
    expect(page.locator("#sw-mode")).to_have_text("async_queue")
    page.locator("#switch-btn").click()
    page.locator("#mode-dialog").get_by_label("Reason").fill("I want the kill switch on")
    # Another admin flips the switch while this dialog is open.
    other = system.call("POST", "/api/admin/system/mode", "other_admin",
                        json={"mode": "sync_direct", "reason": "incident 42", "expected_version": 1})
    assert other.status_code == 200, other.text

    page.locator("#mode-confirm").click()
    expect(page.locator("#switch-msg")).to_contain_text("changed by other-admin meanwhile")
    expect(page.locator("#mode-dialog")).to_be_hidden()
    expect(page.locator("#sw-mode")).to_have_text("sync_direct")
    expect(page.locator("#sw-last")).to_contain_text("incident 42", timeout=WAIT_MS)
    # (GET /mode may answer from an instance's cache for up to 1 s)
    state = wait_until(lambda: (s := system.mode())["version"] == 2 and s, timeout=3, message="version 2")
    assert (state["mode"], state["updated_by"], state["reason"]) == ("sync_direct", "other-admin", "incident 42")


# ------------------------------------------------------------------------------------------------ refreshes


def test_refreshes_keep_the_open_dialog_its_text_the_search_and_expanded_rows(system, new_page):
    assert system.create_user("panel-first@example.com").status_code == 202
    page = open_panel(new_page(), system)
    search = page.get_by_label("Search")
    search.fill("creation")
    row = page.locator("#log-list li.log-row:not([hidden])", has=page.locator("details")).first
    expect(row).to_be_visible(timeout=WAIT_MS)
    row_id = row.get_attribute("data-id")
    row.locator("summary").click()
    expanded = page.locator(f"#log-list li[data-id='{row_id}'] details")
    expect(expanded).to_have_attribute("open", "")
    # A mark on the DOM node itself: it survives only if the row is kept, not rebuilt.
    page.evaluate("id => { document.querySelector(`#log-list li[data-id='${id}']`).__kept = true; }", row_id)

    reason = "typed while the panel refreshes: do not lose me"
    page.locator("#switch-btn").click()
    dialog = page.locator("#mode-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Reason").press_sequentially(reason)
    refreshes = count_refreshes(page)
    # New events arrive meanwhile: the list must grow above the expanded row, not be rebuilt.
    assert system.create_user("panel-second@example.com").status_code == 202
    wait_until(lambda: len(refreshes) >= 4, timeout=30, message="4 refresh cycles", page=page)

    expect(dialog).to_be_visible()
    assert dialog.get_by_label("Reason").input_value() == reason
    assert page.evaluate("document.activeElement.id") == "mode-reason"
    expect(expanded).to_have_attribute("open", "")
    assert page.evaluate("id => document.querySelector(`#log-list li[data-id='${id}']`).__kept === true", row_id)
    assert search.input_value() == "creation"
    newest = int(page.locator("#log-list li.log-row").first.get_attribute("data-id"))
    assert newest > int(row_id), "events that arrived during the refreshes are listed first"
    updated = page.locator("#updated")
    expect(updated).to_have_attribute("aria-live", "polite")
    expect(updated).to_have_text(re.compile(r"Updated (just now|\d+ s ago)"))
    assert system.mode()["version"] == 1, "nothing was submitted"

    page.keyboard.press("Escape")  # closes the dialog like Cancel
    expect(dialog).to_be_hidden()
    assert system.mode()["mode"] == "async_queue"


def test_pause_stops_refreshing_and_resume_restarts_it(system, new_page):
    page = open_panel(new_page(), system)
    pause = page.get_by_role("button", name="Pause updates")
    pause.click()
    expect(page.get_by_role("button", name="Resume updates")).to_have_attribute("aria-pressed", "true")
    refreshes = count_refreshes(page)
    page.wait_for_timeout(2500)
    assert refreshes == [], "no refresh while paused"
    expect(page.locator("#updated")).to_contain_text("paused")
    page.get_by_role("button", name="Resume updates").click()
    wait_until(lambda: len(refreshes) >= 2, timeout=15, message="refreshes after resume", page=page)


def test_polling_stops_while_the_tab_is_hidden_and_a_failed_refresh_keeps_the_data(system, new_page):
    page = open_panel(new_page(), system)
    refreshes = count_refreshes(page)
    page.evaluate("""() => {
        Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
        Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    page.wait_for_timeout(1500)  # an answer already on its way may still arrive
    refreshes.clear()
    page.wait_for_timeout(3000)
    assert refreshes == [], "no polling while the tab is hidden"
    page.evaluate("""() => {
        delete document.hidden; delete document.visibilityState;
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    wait_until(lambda: refreshes, timeout=5, message="a refresh once the tab is visible again", page=page)

    page.route("**/api/admin/system/metrics", lambda route: route.abort("connectionrefused"))
    stale = page.locator("#stale")
    expect(stale).to_be_visible(timeout=WAIT_MS)
    expect(stale).to_contain_text("Refresh failed (")
    expect(stale).to_contain_text("metrics: the server could not be reached")
    expect(stale).to_contain_text("Showing the data last loaded at")
    expect(page.locator("#verdict")).to_contain_text("Healthy")  # the last data is kept
    expect(page.locator("#st-redis")).to_contain_text("available")
    expect(page.locator("#updated")).to_have_text(re.compile(r"Updated [2-9]\d* s ago"), timeout=WAIT_MS)
    page.unroute("**/api/admin/system/metrics")
    expect(stale).to_be_hidden(timeout=WAIT_MS)


def test_the_log_filters_by_level_searches_metadata_and_keeps_at_most_200_rows(system, new_page):
    insert = ("INSERT INTO system_health_logs (level, event, message, metadata, source)"
              " SELECT %s, %s, %s || n, jsonb_build_object('n', n, 'needle', %s::text), 'browser-test'"
              " FROM generate_series(1, %s::int) AS n")
    system.sql(insert, ("INFO", "bulk_info", "bulk event #", "hay", 60))
    system.sql(insert, ("ERROR", "disk_on_fire", "disk on fire #", "zebra", 1))
    page = open_panel(new_page(), system)
    rows = page.locator("#log-list li.log-row")
    visible = page.locator("#log-list li.log-row:not([hidden])")
    expect(rows).to_have_count(50, timeout=WAIT_MS)  # the last 50 events, newest first
    ids = [int(i) for i in page.eval_on_selector_all("#log-list li.log-row", "els => els.map(e => e.dataset.id)")]
    assert ids == sorted(ids, reverse=True)
    expect(rows.filter(has_text="disk_on_fire")).to_have_count(1)

    page.get_by_label("Search").fill("zebra")  # only in the metadata
    expect(visible).to_have_count(1)
    expect(visible.first).to_contain_text("disk on fire #1")
    expect(page.locator("#log-count")).to_contain_text("1 of 50 events match")
    page.get_by_label("Search").fill("")

    page.get_by_label("Level").select_option("ERROR")
    expect(rows).to_have_count(1, timeout=WAIT_MS)
    expect(rows.first).to_have_class(re.compile("level-ERROR"))
    page.get_by_label("Level").select_option("")
    expect(rows).to_have_count(50, timeout=WAIT_MS)

    system.sql(insert, ("WARNING", "bulk_warning", "bulk warning #", "hay", 220))
    expect(rows).to_have_count(200, timeout=WAIT_MS)  # new events prepended, the oldest dropped
    expect(rows.filter(has_text="bulk warning #220")).to_have_count(1)
    ids = [int(i) for i in page.eval_on_selector_all("#log-list li.log-row", "els => els.map(e => e.dataset.id)")]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 200


# ------------------------------------------------------------------------------------------------ failures


def test_a_failed_job_is_listed_and_retry_creates_the_user(system, new_page):
    system.sql("""
        CREATE OR REPLACE FUNCTION panel_trap() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.email LIKE 'fail-%' THEN RAISE EXCEPTION 'panel trap: refusing this row'; END IF;
            RETURN NEW;
        END $$;
        DROP TRIGGER IF EXISTS panel_trap ON users;
        CREATE TRIGGER panel_trap BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION panel_trap();
    """)
    try:
        page = open_panel(new_page(), system)
        expect(page.locator("#failed-empty")).to_be_visible()
        queued = system.create_user("fail-panel@example.com", "Failing Fiona")
        assert queued.status_code == 202, queued.text
        request_id = queued.json()["request_id"]
        row = page.locator("#failed-rows tr", has_text="fail-panel@example.com")
        expect(row).to_be_visible(timeout=30_000)  # JOB_ATTEMPTS=1: the first failure is final
        expect(row).to_contain_text(request_id)
        expect(row).to_contain_text("RaiseException")
        expect(page.locator("#t-failed")).to_have_text("1", timeout=WAIT_MS)
    finally:
        system.sql("DROP TRIGGER IF EXISTS panel_trap ON users")

    row.get_by_role("button", name="Retry").click()
    dialog = page.locator("#retry-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("fail-panel@example.com")
    dialog.get_by_label("Reason").fill("trigger removed, retrying")
    dialog.get_by_role("button", name="Retry request").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#failed-msg")).to_contain_text("Retried the request for fail-panel@example.com")
    expect(row).to_have_count(0, timeout=30_000)
    expect(page.locator("#failed-empty")).to_be_visible()

    def status() -> str | None:
        rows = system.sql("SELECT status FROM creation_requests WHERE id = %s", (request_id,))
        return rows[0]["status"] if rows and rows[0]["status"] == "created" else None

    assert wait_until(status, timeout=30, message="the retried request is created") == "created"
    assert system.sql("SELECT count(*) AS n FROM users WHERE email = 'fail-panel@example.com'")[0]["n"] == 1
    retried = system.sql("SELECT metadata FROM system_health_logs WHERE event = 'request_retried'")
    assert retried and retried[0]["metadata"]["reason"] == "trigger removed, retrying"


# ------------------------------------------------------------------------------------------------ sign-in


def test_a_sales_manager_token_gets_the_403_message_and_no_admin_data(system, new_page):
    page = new_page()
    load(page, system.panel_url(refresh=1))
    token = page.get_by_label("Admin token")
    expect(token).to_have_attribute("type", "password")
    token.fill(system.tokens["sales_manager"])
    page.get_by_role("button", name="Sign in with token").click()
    message = page.locator("#auth-msg")
    expect(message).to_contain_text("This token is not an admin's (403)")
    expect(message).to_have_attribute("role", "alert")
    expect(page.locator("#panel")).to_be_hidden()
    expect(page.locator("#session-controls")).to_be_hidden()
    assert page.locator("#log-list li").count() == 0 and page.locator("#failed-rows tr").count() == 0
    assert page.locator("#st-mode").text_content() == "–"
    assert page.evaluate("sessionStorage.length") == 0

    token.fill("not-a-token")
    page.get_by_role("button", name="Sign in with token").click()
    expect(message).to_contain_text("(401)")
    expect(page.locator("#panel")).to_be_hidden()


def test_the_token_stays_in_the_tab_leaves_the_address_bar_and_sign_out_forgets_it(system, new_page):
    page = open_panel(new_page(), system)
    assert "token=" not in page.url
    assert page.evaluate("Object.values(sessionStorage)") == [system.tokens["admin"]]
    page.reload()
    expect(page.locator("#panel")).to_be_visible(timeout=WAIT_MS)  # same tab: still signed in
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#panel")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    expect(page.get_by_label("Admin token")).to_be_visible()
    expect(page.locator("#panel")).to_be_hidden()


# ------------------------------------------------------------------------------------------------ look + a11y


def test_healthy_panel_at_desktop_and_phone_width_with_screenshots(system, new_page):
    for i in range(4):
        assert system.create_user(f"panel-healthy-{i}@example.com", f"Healthy {i}").status_code == 202
    page = open_panel(new_page(1280, 800), system)
    expect(page.locator("#verdict")).to_contain_text("Healthy", timeout=WAIT_MS)
    expect(page.locator("#banner")).to_be_hidden()
    expect(page.locator("#t-created")).to_have_text("4", timeout=30_000)
    expect(page.locator("#st-workers")).to_have_text("1")
    expect(page.locator("#st-consumers")).to_contain_text("consumer/dev")
    expect(page.locator("#st-redis")).to_contain_text("available")
    chart = page.locator("#chart svg[role='img']")
    expect(chart.locator("rect.bar-completed")).not_to_have_count(0, timeout=WAIT_MS)
    expect(page.locator("#chart-summary")).to_contain_text("4 completed")
    expect(page.locator("#chart-svg-desc")).to_contain_text("4 completed")

    # Landmarks, headings, labels
    assert page.locator("header").count() == 1 and page.locator("main").count() == 1
    for heading in ("Status", "Kill switch", "Queue", "Failed requests", "Health log"):
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.id)""")
    assert unlabelled == []
    # Keyboard: Tab reaches the kill switch, Enter opens its dialog, Escape closes it.
    page.evaluate("document.activeElement && document.activeElement.blur()")
    for _ in range(15):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "switch-btn":
            break
    assert page.evaluate("document.activeElement.id") == "switch-btn"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused control is visibly marked"
    page.keyboard.press("Enter")
    expect(page.locator("#mode-dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#mode-dialog")).to_be_hidden()
    page.locator("#log-list details summary").first.click()  # one row expanded, as in real use
    screenshot(page, "panel-healthy.png")

    phone = open_panel(new_page(390, 844), system)
    expect(phone.locator("#verdict")).to_contain_text("Healthy", timeout=WAIT_MS)
    expect(phone.locator("#t-created")).to_have_text("4", timeout=WAIT_MS)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390, "no sideways scrolling of the page"
    screenshot(phone, "panel-phone.png", full_page=False)


def test_redis_stopped_shows_the_banner_and_the_fallback_then_clears_by_itself(system, new_page):
    page = open_panel(new_page(1280, 800), system)
    banner = page.locator("#banner")
    expect(page.locator("#verdict")).to_contain_text("Healthy", timeout=WAIT_MS)
    expect(banner).to_be_hidden()
    refreshes = count_refreshes(page)

    system.redis.stop()
    try:
        stopped_at = time.monotonic()
        expect(banner).to_be_visible(timeout=8_000)  # one refresh (1 s) + the metrics' bounded Redis check
        assert time.monotonic() - stopped_at < 8
        expect(banner).to_have_attribute("role", "alert")
        expect(banner).to_contain_text("because Redis is unavailable")
        expect(page.locator("#st-effective")).to_contain_text("sync_direct — automatic fallback: Redis unavailable")
        expect(page.locator("#st-redis")).to_have_text("UNAVAILABLE")
        expect(page.locator("#st-mode")).to_have_text("async_queue")
        expect(page.locator("#q-waiting")).to_have_text("n/a")
        expect(page.locator("#verdict")).to_contain_text("automatic fallback")
        # Users are still created (201, directly) and the fallback is in the health log.
        created = system.create_user("panel-fallback@example.com", "Fallback Fred")
        assert created.status_code == 201 and created.json()["fallback"] is True, created.text
        expect(page.locator("#log-list li.level-WARNING", has_text="queue_fallback")).not_to_have_count(0,
                                                                                                      timeout=WAIT_MS)
        expect(page.locator("#log-list li.level-SWITCH", has_text="effective_mode_changed")).not_to_have_count(0)
        expect(page.locator("#t-fallbacks")).to_have_text("1", timeout=WAIT_MS)
        screenshot(page, "panel-degraded.png")
    finally:
        system.redis.start()
    started = len(refreshes)
    expect(banner).to_be_hidden(timeout=30_000)  # nothing to click: the next healthy refresh clears it
    assert len(refreshes) > started
    expect(page.locator("#st-effective")).to_contain_text("async_queue")
    expect(page.locator("#st-redis")).to_contain_text("available")
    expect(page.locator("#verdict")).to_contain_text("Healthy")
