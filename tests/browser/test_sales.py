"""The sales desk as a sales manager uses it, in a real Chromium against `invoke dev` (real consumer, PostgreSQL,
Redis, SES emulator). Pages are opened with `?refresh=1` so the lists follow a batch within seconds."""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import INSTALL_HINT, PanelSystem, screenshot
from tests.browser.test_panel import load, wait_until

try:
    from playwright.sync_api import expect
except ImportError:  # a clear failure, never a silent pass
    pytest.fail(f"the playwright package is missing: {INSTALL_HINT}", pytrace=False)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

WAIT_MS = 30_000


def open_desk(page: Any, system: PanelSystem, role: str = "sales_manager") -> Any:
    load(page, f"{system.url}/sales?refresh=1#token={system.tokens[role]}")
    expect(page.locator("#desk")).to_be_visible(timeout=WAIT_MS)
    return page


def bulk_posts(page: Any) -> list[str]:
    """URLs of the uploads the page sends (to prove the preview sends nothing)."""
    sent: list[str] = []
    page.on("request", lambda r: r.method == "POST" and r.url.endswith("/api/users/bulk") and sent.append(r.url))
    return sent


def test_create_one_user_shows_field_errors_inline_then_creates(system, new_page):
    page = open_desk(new_page(), system)
    page.get_by_label("Email").fill("not an address")
    page.get_by_label("Full name").fill("Ann Lee")
    page.get_by_label("Phone").fill("12")
    page.get_by_role("button", name="Create user").click()
    email_error = page.locator("#e-email")
    expect(email_error).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#e-phone")).to_be_visible()
    expect(page.get_by_label("Email")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#e-full_name")).to_be_hidden()
    assert system.sql("SELECT count(*) AS n FROM creation_requests") == [{"n": 0}]

    page.get_by_label("Email").fill("ann.lee@example.com")
    page.get_by_label("Phone").fill("+44 20 7946 0000")
    page.get_by_role("button", name="Create user").click()
    expect(page.locator("#create-result")).to_contain_text("ann.lee@example.com", timeout=WAIT_MS)
    expect(email_error).to_be_hidden()
    row = page.locator("#recent-rows tr", has_text="ann.lee@example.com")
    expect(row).to_be_visible(timeout=WAIT_MS)
    expect(row.locator(".badge")).to_have_text("created", timeout=WAIT_MS)  # the consumer made it
    assert system.sql("SELECT email, phone FROM users") == [{"email": "ann.lee@example.com",
                                                             "phone": "+44 20 7946 0000"}]

    page.get_by_label("Email").fill("ANN.LEE@example.com")
    page.get_by_label("Full name").fill("Ann Again")
    page.get_by_label("Phone").fill("")
    page.get_by_role("button", name="Create user").click()
    expect(email_error).to_contain_text("already exists", timeout=WAIT_MS)
    screenshot(page, "sales-desk-create.png")


GOOD_AND_BAD = (
    b"Email;Full_Name;Phone\n"
    b"buyer1@example.com;Buyer One;+1 555 0101\n"
    b"buyer2@example.com;Buyer Two;\n"
    b"not-an-address;Bad Email;\n"
    b"buyer3@example.com;;\n"
    b"BUYER1@example.com;Buyer One Again;\n"
    b"buyer4@example.com;\"Four, Buyer\";\n"
    b"buyer5@example.com;=HYPERLINK(\"http://evil.example\");\n"
)


def test_csv_preview_shows_row_errors_before_sending_and_the_batch_is_followed_to_the_end(system, new_page):
    page = open_desk(new_page(), system)
    sent = bulk_posts(page)
    page.set_input_files("#file-input", files=[{"name": "webinar.csv", "mimeType": "text/csv",
                                                "buffer": GOOD_AND_BAD}])
    summary = page.locator("#preview-summary")
    expect(summary).to_contain_text("7 row(s): 4 ready, 2 with errors, 1 repeated", timeout=WAIT_MS)
    problems = page.locator("#preview-rows tr")
    expect(problems).to_have_count(3)
    expect(problems.nth(0)).to_contain_text("3")
    expect(problems.nth(0)).to_contain_text("email")
    expect(problems.nth(1)).to_contain_text("full_name")
    expect(problems.nth(2)).to_contain_text("same address as row 1")
    assert sent == []  # the preview is the browser's own: nothing was uploaded yet
    assert system.sql("SELECT count(*) AS n FROM bulk_batches") == [{"n": 0}]
    screenshot(page, "sales-desk-preview.png")

    page.get_by_role("button", name="Send 4 row(s)").click()
    result = page.locator("#upload-result")
    expect(result).to_contain_text("4 row(s) accepted", timeout=WAIT_MS)
    expect(result).to_contain_text("2 rejected by the server")  # confirmed by the server
    assert len(sent) == 1
    batch = page.locator("#batch-list .batch").first
    expect(batch).to_contain_text("4 of 4 done: 4 created", timeout=WAIT_MS)
    expect(batch).to_have_class(re.compile("batch-done"))
    assert batch.locator("progress").evaluate("p => [p.value, p.max]") == [4, 4]
    assert system.sql("SELECT count(*) AS n FROM users") == [{"n": 4}]
    screenshot(page, "sales-desk-upload.png")

    with page.expect_download() as info:
        batch.get_by_role("button", name="Download results.csv").click()
    download = info.value
    lines = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    assert [(line["row"], line["status"]) for line in lines] == [
        ("1", "created"), ("2", "created"), ("3", "rejected"), ("4", "rejected"), ("5", "duplicate"),
        ("6", "created"), ("7", "created")]
    assert system.sql("SELECT full_name FROM users WHERE email = 'buyer5@example.com'") == [
        {"full_name": '=HYPERLINK("http://evil.example")'}]  # stored as typed, never run: see results.csv rules
    recent = page.locator("#recent-rows tr", has_text="buyer4@example.com")
    with page.expect_download() as info:  # the same file from the caller's recent requests
        recent.get_by_role("button", name="results.csv").click()
    assert Path(info.value.path()).read_text() == Path(download.path()).read_text()


@pytest.mark.parametrize(("content", "says"), [
    ("email,full_name\nrene@example.com,René\n".encode("latin-1"), "not valid UTF-8"),
    (b"ann@example.com,Ann\n", "no header"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "binary"),
    (b"", "empty"),
])
def test_a_bad_file_cannot_be_sent(system, new_page, content, says):
    page = open_desk(new_page(), system)
    sent = bulk_posts(page)
    page.set_input_files("#file-input", files=[{"name": "bad.csv", "mimeType": "text/csv", "buffer": content}])
    expect(page.locator("#file-error")).to_contain_text(says, timeout=WAIT_MS)
    expect(page.locator("#send-btn")).to_be_disabled()
    assert sent == []


def test_with_the_queue_off_an_upload_is_accepted_and_drained(system, new_page):
    response = system.call("POST", "/api/admin/system/mode", json={"mode": "sync_direct", "reason": "desk test"})
    assert response.status_code == 200, response.text
    time.sleep(1.2)  # every instance's mode cache
    page = open_desk(new_page(), system)
    rows = "email,full_name\n" + "".join(f"drain{i}@example.com,Drain {i}\n" for i in range(12))
    page.set_input_files("#file-input", files=[{"name": "drain.csv", "mimeType": "text/csv",
                                                "buffer": rows.encode()}])
    page.get_by_role("button", name="Send 12 row(s)").click()
    expect(page.locator("#upload-result")).to_contain_text("created by the drain", timeout=WAIT_MS)
    batch = page.locator("#batch-list .batch").first
    expect(batch).to_contain_text("drain (queue off)")
    # the live consumer's drain creates them at the global rate limit (10/s by default)
    expect(batch).to_contain_text("12 of 12 done: 12 created", timeout=WAIT_MS)
    wait_until(lambda: system.sql("SELECT count(*) AS n FROM users") == [{"n": 12}], 10, "12 users")


def test_a_refused_token_is_explained_and_the_phone_layout_fits(system, new_page):
    page = new_page()
    load(page, f"{system.url}/sales#token=not-a-token")
    expect(page.locator("#auth-msg")).to_contain_text("401", timeout=WAIT_MS)
    expect(page.locator("#desk")).to_be_hidden()

    phone = open_desk(new_page(width=390, height=844), system)
    system.create_user("phone.view@example.com", "Phone View")
    expect(phone.locator("#recent-rows tr", has_text="phone.view@example.com")).to_be_visible(timeout=WAIT_MS)
    overflow = phone.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, overflow
    screenshot(phone, "sales-desk-phone.png")
