"""The cockpit in the panel, in a real Chromium against `invoke dev`: search with paging, a request's story,
bulk retry (filter -> dry run -> reason -> progress), the audit trail, the limits form, the switch's countdown
and what a viewer sees."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import INSTALL_HINT, PanelSystem, screenshot
from tests.browser.test_panel import WAIT_MS, open_panel, wait_until

try:
    from playwright.sync_api import expect
except ImportError:  # a clear failure, never a silent pass
    pytest.fail(f"the playwright package is missing: {INSTALL_HINT}", pytrace=False)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def insert_requests(system: PanelSystem, prefix: str, n: int, *, status: str = "failed") -> None:
    system.sql(
        "INSERT INTO creation_requests (id, actor, body_hash, email, email_normalized, full_name, mode, status,"
        " attempts, error_code, error, created_at, updated_at)"
        " SELECT 'req_' || %s || g, 'panel-sales', 'h', %s || g || '@example.com', %s || g || '@example.com',"
        " 'Person ' || g, 'async_queue', %s, 1, CASE WHEN %s = 'failed' THEN 'creation_error' END,"
        " CASE WHEN %s = 'failed' THEN 'attempt 1 of 1 failed: RaiseException' END,"
        " now() - make_interval(secs => g), now() - make_interval(secs => g)"
        " FROM generate_series(1, %s) AS g", (prefix, prefix, prefix, status, status, status, n))


def search(page: Any, q: str, status: str = "") -> None:
    page.get_by_label("Email or name contains").fill(q)
    page.locator("#req-status").select_option(status)
    page.get_by_label("Email or name contains").press("Enter")  # keyboard: Enter submits the search


def test_search_pages_and_the_drawer_tells_the_story(system, new_page):
    created = system.create_user("story-panel@example.com", "Story Panel")
    assert created.status_code == 202, created.text
    insert_requests(system, "pager", 30, status="created")
    page = open_panel(new_page(), system)
    search(page, "PAGER")
    rows = page.locator("#req-rows tr")
    expect(rows).to_have_count(25, timeout=WAIT_MS)
    expect(rows.first).to_contain_text("pager1@example.com")  # newest first
    expect(page.locator("#req-count")).to_have_text("25+ shown")
    page.get_by_role("button", name="Load more").click()
    expect(rows).to_have_count(30)
    expect(page.get_by_role("button", name="Load more")).to_be_hidden()

    search(page, "STORY PANEL")  # case ignored (Unicode width: tests/functions/test_cockpit.py)
    expect(rows).to_have_count(1, timeout=WAIT_MS)
    wait_until(lambda: system.sql("SELECT 1 FROM creation_requests WHERE email = 'story-panel@example.com'"
                                  " AND status = 'created'"), 30, "the consumer creates the user")
    rows.first.get_by_role("button", name="Story").click()
    drawer = page.locator("#req-drawer")
    expect(drawer).to_be_visible()
    timeline = drawer.locator("#drawer-timeline li")
    expect(timeline.first).to_contain_text("Recorded")
    expect(drawer).to_contain_text("Queued")
    expect(drawer).to_contain_text("Attempt")
    expect(drawer).to_contain_text("consumer/dev")
    expect(drawer).to_contain_text("User created")
    expect(drawer.locator("#drawer-facts")).to_contain_text("story-panel@example.com")
    screenshot(page, "panel-request-story.png", full_page=False)
    page.keyboard.press("Escape")
    expect(drawer).to_be_hidden()


def test_bulk_retry_from_a_search_dry_run_reason_progress(system, new_page):
    insert_requests(system, "bulkpanel", 3)
    page = open_panel(new_page(), system)
    search(page, "bulkpanel", "failed")
    expect(page.locator("#req-rows tr")).to_have_count(3, timeout=WAIT_MS)
    page.get_by_role("button", name="Retry matching failed…").click()
    dialog = page.locator("#bulk-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("q = bulkpanel, status = failed")
    expect(dialog.locator(".bulk-match")).to_have_text("3")
    expect(dialog.locator(".bulk-would")).to_have_text("3")
    expect(dialog.locator(".bulk-already")).to_have_count(2)
    confirm = dialog.get_by_role("button", name="Retry 3 requests")
    confirm.click()
    expect(dialog.locator("#bulk-error")).to_contain_text("reason")  # the reason is required
    assert system.sql("SELECT count(*) AS n FROM creation_requests WHERE status = 'failed'")[0]["n"] == 3
    dialog.get_by_label("Reason").fill("SES is back")
    screenshot(page, "panel-bulk-retry.png", full_page=False)
    confirm.click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#req-msg")).to_contain_text("Retried 3, skipped 0")
    expect(page.locator("#bulk-progress")).to_contain_text("Done.", timeout=WAIT_MS)
    assert system.sql("SELECT count(*) AS n FROM users WHERE email LIKE 'bulkpanel%'")[0]["n"] == 3
    expect(page.locator("#audit-rows tr").first).to_contain_text("bulk_retry", timeout=WAIT_MS)
    expect(page.locator("#audit-rows tr").first).to_contain_text("SES is back")


def test_limits_form_saves_refuses_out_of_bounds_and_is_audited(system, new_page):
    page = open_panel(new_page(), system)
    expect(page.locator("#lim-current")).to_contain_text("configured defaults", timeout=WAIT_MS)
    page.get_by_label("Jobs at once per consumer (1–100)").fill("0")
    page.get_by_label("Reason (3–500 characters)").fill("too low")
    page.get_by_role("button", name="Save limits").click()
    expect(page.locator("#lim-msg")).to_contain_text("Not saved")
    expect(page.locator("#lim-msg")).to_contain_text("concurrency")
    page.get_by_label("Jobs at once per consumer (1–100)").fill("3")
    page.get_by_label("Job starts (1–10000)").fill("20")
    page.get_by_label("Reason (3–500 characters)").fill("campaign day")
    page.get_by_role("button", name="Save limits").click()
    expect(page.locator("#lim-msg")).to_contain_text("Saved (version 1)")
    expect(page.locator("#lim-current")).to_contain_text("20 job starts per 1000 ms")
    expect(page.locator("#lim-current")).to_contain_text("3 jobs at once")
    audit = page.locator("#audit-rows tr").first
    expect(audit).to_contain_text("limits_changed", timeout=WAIT_MS)
    expect(audit).to_contain_text("campaign day")
    expect(audit).to_contain_text("panel-admin")
    metrics = system.call("GET", "/api/admin/system/metrics").json()
    assert metrics["rate_limit"] == {"max": 20, "duration_ms": 1000}


def test_switch_dialog_previews_in_flight_work_and_the_countdown_runs(system, new_page):
    page = open_panel(new_page(), system)
    page.locator("#switch-btn").click()
    dialog = page.locator("#mode-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#mode-preview")).to_contain_text("waiting")
    expect(dialog.locator("#mode-preview")).to_contain_text("consumers keep finishing them")
    dialog.get_by_label("Reason").fill("Redis maintenance")
    dialog.get_by_label("Return by itself").select_option("900")
    dialog.get_by_role("button", name="Switch to sync_direct").click()
    expect(dialog).to_be_hidden()
    countdown = page.locator("#sw-countdown")
    expect(countdown).to_contain_text("Returns to async_queue by itself in 14 min", timeout=WAIT_MS)
    first = countdown.text_content()
    page.wait_for_timeout(2100)
    assert countdown.text_content() != first, "the countdown ticks"
    state = system.mode()
    assert state["mode"] == "sync_direct" and state["revert_to"] == "async_queue" and state["revert_at"]


def test_a_viewer_reads_everything_and_sees_no_action(system, new_page):
    insert_requests(system, "viewerpanel", 2)
    page = open_panel(new_page(390, 844), system, role="viewer")
    expect(page.locator("#t-failed")).to_have_text("2", timeout=WAIT_MS)
    expect(page.locator("#failed-rows tr")).to_have_count(2)
    for selector in ("#switch-btn", "#req-bulk", "#limits-form", "#failed-rows button"):
        assert not page.locator(selector).first.is_visible(), selector
    expect(page.locator("#lim-current")).to_contain_text("job starts")
    search(page, "viewerpanel")
    expect(page.locator("#req-rows tr")).to_have_count(2, timeout=WAIT_MS)
    page.locator("#req-rows tr").first.get_by_role("button", name="Story").click()
    expect(page.locator("#drawer-timeline li").first).to_contain_text("Recorded")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "no sideways scrolling at phone width"
    screenshot(page, "panel-viewer-phone.png", full_page=False)
