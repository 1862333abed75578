"""A `#token=` link never silently replaces the session a tab already has (login CSRF: one person's link would
sign a colleague's tab in as them): on the panel and on the sales desk the page asks first, and keeps its own
session when refused. Real Chromium against `invoke dev`."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import INSTALL_HINT, PanelSystem
from tests.browser.test_panel import WAIT_MS, load

try:
    from playwright.sync_api import expect
except ImportError:  # a clear failure, never a silent pass
    pytest.fail(f"the playwright package is missing: {INSTALL_HINT}", pytrace=False)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

KEY = "provisioner.adminToken"


def tab_token(page: Any) -> str | None:
    return page.evaluate(f"sessionStorage.getItem('{KEY}')")  # type: ignore[no-any-return]


def answer_dialogs(page: Any, answers: list[bool]) -> list[str]:
    """Answer the page's dialogs with `answers[-1]` (the test appends its next answer); returns their messages
    (to prove the page asked)."""
    asked: list[str] = []

    def answer(dialog: Any) -> None:
        asked.append(dialog.message)
        if answers[-1]:
            dialog.accept()
        else:
            dialog.dismiss()
    page.on("dialog", answer)
    return asked


PAGES = {
    "panel": ("/admin/system-health", "admin", "other_admin", "#panel"),
    "sales desk": ("/sales", "sales_manager", "other_sales", "#desk"),
}


@pytest.mark.parametrize("where", list(PAGES))
def test_a_planted_link_asks_before_replacing_the_tabs_session_and_keeps_it_when_refused(
        system: PanelSystem, new_page: Any, where: str) -> None:
    path, own, planted, section = PAGES[where]
    page = new_page()
    answers = [False]
    asked = answer_dialogs(page, answers)
    # No session yet: the link signs the tab in without a question.
    load(page, f"{system.url}{path}?refresh=5#token={system.tokens[own]}")
    expect(page.locator(section)).to_be_visible(timeout=WAIT_MS)
    assert asked == [] and tab_token(page) == system.tokens[own]

    # Someone else's link opened in this tab: the page asks, the answer is no, the tab keeps its own session.
    load(page, f"{system.url}{path}?refresh=6#token={system.tokens[planted]}")
    expect(page.locator(section)).to_be_visible(timeout=WAIT_MS)
    assert len(asked) == 1 and "replace" in asked[0].lower()
    assert tab_token(page) == system.tokens[own]
    assert "token=" not in page.url  # the planted token leaves the address bar either way

    # The same link again, answered yes: now the tab holds the other session.
    answers.append(True)
    load(page, f"{system.url}{path}?refresh=7#token={system.tokens[planted]}")
    expect(page.locator(section)).to_be_visible(timeout=WAIT_MS)
    assert len(asked) == 2 and tab_token(page) == system.tokens[planted]
    # Its own token back in a link: the same session, nothing to ask.
    load(page, f"{system.url}{path}?refresh=8#token={system.tokens[planted]}")
    expect(page.locator(section)).to_be_visible(timeout=WAIT_MS)
    assert len(asked) == 2
