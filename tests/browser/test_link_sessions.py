"""A `#token=` link never silently replaces the session a tab already has (login CSRF: one person's link would
sign a colleague's tab in as them): on the panel and on the sales desk the page asks first, and keeps its own
session when refused. Real Chromium against `invoke dev`."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import INSTALL_HINT, PanelSystem, screenshot
from tests.browser.test_panel import WAIT_MS, load, wait_until

try:
    from playwright.sync_api import expect
except ImportError:  # a clear failure, never a silent pass
    pytest.fail(f"the playwright package is missing: {INSTALL_HINT}", pytrace=False)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

KEY = "provisioner.adminToken"


def tab_token(page: Any) -> str | None:
    return page.evaluate(f"sessionStorage.getItem('{KEY}')")  # type: ignore[no-any-return]


PAGES = {
    "panel": ("/admin/system-health", "admin", "other_admin", "#panel"),
    "sales desk": ("/sales", "sales_manager", "other_sales", "#desk"),
}


@pytest.mark.parametrize("where", list(PAGES))
def test_a_planted_link_asks_before_replacing_the_tabs_session_and_keeps_it_when_refused(
        system: PanelSystem, new_page: Any, where: str) -> None:
    path, own, planted, section = PAGES[where]
    page = new_page()
    native: list[str] = []
    page.on("dialog", lambda dialog: (native.append(dialog.message), dialog.dismiss()))
    ask = page.locator("#replace-session")
    # No session yet: the link signs the tab in without a question.
    load(page, f"{system.url}{path}?refresh=5#token={system.tokens[own]}")
    expect(page.locator(section)).to_be_visible(timeout=WAIT_MS)
    expect(ask).to_have_count(0)
    assert tab_token(page) == system.tokens[own]

    # Someone else's link opened in this tab: the page asks (in the page); kept, the tab stays signed in as before.
    load(page, f"{system.url}{path}?refresh=6#token={system.tokens[planted]}")
    expect(ask).to_be_visible(timeout=WAIT_MS)
    expect(ask).to_contain_text("Replace this tab's session?")
    assert "token=" not in page.url  # the planted token left the address bar at once
    screenshot(page, f"replace-session-{where.replace(' ', '-')}.png")
    ask.get_by_role("button", name="Keep my session").click()
    expect(ask).to_have_count(0)
    expect(page.locator(section)).to_be_visible(timeout=WAIT_MS)
    assert tab_token(page) == system.tokens[own]

    # Escape keeps it too; the same link pasted into the open page (a hash change, no reload) asks as well.
    page.evaluate(f"window.location.hash = 'token={system.tokens[planted]}'")
    expect(ask).to_be_visible(timeout=WAIT_MS)
    page.keyboard.press("Escape")
    expect(ask).to_have_count(0)
    assert tab_token(page) == system.tokens[own]

    # Answered "use the link's session": now the tab holds the other session.
    load(page, f"{system.url}{path}?refresh=7#token={system.tokens[planted]}")
    ask.get_by_role("button", name="Use the link's session").click()
    expect(page.locator(section)).to_be_visible(timeout=WAIT_MS)
    wait_until(lambda: tab_token(page) == system.tokens[planted], 10, "the link's session was not taken", page)
    # Its own token in a link again: the same session, nothing to ask.
    load(page, f"{system.url}{path}?refresh=8#token={system.tokens[planted]}")
    expect(page.locator(section)).to_be_visible(timeout=WAIT_MS)
    expect(ask).to_have_count(0)
    assert native == []  # never a browser dialog
