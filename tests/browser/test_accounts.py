"""Accounts as their people use them, in a real Chromium against `invoke dev`: the emailed link's page sets a
password, staff sign in to the panel with it, an admin makes accounts and sends a welcome email again."""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import unquote

import pytest

from tests.browser.conftest import INSTALL_HINT, PanelSystem, screenshot
from tests.browser.test_panel import WAIT_MS, load, wait_until

try:
    from playwright.sync_api import expect
except ImportError:  # a clear failure, never a silent pass
    pytest.fail(f"the playwright package is missing: {INSTALL_HINT}", pytrace=False)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PASSWORD = "lantern-orchard-velvet-19"


def emailed_link(stack: Any, address: str, *, after: int = 0) -> str:
    """The set-password link of the newest welcome email to `address` (sent after the first `after` emails)."""
    def find() -> str | None:
        for message in reversed(stack.ses.sent_messages()[after:]):
            if address.lower() in [to.lower() for to in message["to"]]:
                match = re.search(r"(http://\S+/set-password#token=\S+)", message["body"])
                assert match, message["body"]
                return match.group(1)
        return None
    return wait_until(find, 30, f"no welcome email to {address}")


def claims_in_tab(page: Any) -> dict[str, Any]:
    tokens = page.evaluate("Object.values(sessionStorage)")
    assert len(tokens) == 1
    payload = tokens[0].split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def set_password_in_page(page: Any, link: str, password: str = PASSWORD) -> None:
    load(page, link)
    assert "token=" not in page.url  # the token leaves the address bar (and the history) at once
    assert page.evaluate("window.location.hash + window.location.search") == ""
    page.get_by_label("New password").fill(password)
    page.get_by_label("The same password again").fill(password)
    page.get_by_role("button", name="Set password").click()


def sign_in_to_panel(page: Any, system: PanelSystem, email: str, password: str = PASSWORD) -> None:
    load(page, system.panel_url(refresh=1))
    form = page.locator("#signin")
    form.get_by_label("Email address").fill(email)
    form.get_by_label("Password", exact=True).fill(password)
    form.get_by_role("button", name="Sign in", exact=True).click()


def test_a_staff_member_sets_a_password_from_the_email_and_signs_in_to_the_panel(system, stack, new_page):
    before = len(stack.ses.sent_messages())
    made = system.call("POST", "/api/admin/accounts",
                       json={"email": "olga.oncall@example.com", "full_name": "Olga Oncall", "role": "admin"})
    assert made.status_code == 201, made.text
    account_id = made.json()["account"]["id"]
    link = emailed_link(stack, "olga.oncall@example.com", after=before)
    assert link.startswith(f"{system.url}/set-password#token=")  # in the fragment: no server ever receives it

    page = new_page()
    # A weak password is refused on the page, and the link keeps working.
    set_password_in_page(page, link, "password1234")
    expect(page.locator("#setpw-error")).to_contain_text("Choose another password", timeout=WAIT_MS)
    page.get_by_label("New password").fill(PASSWORD)
    page.get_by_label("The same password again").fill(PASSWORD)
    page.get_by_role("button", name="Set password").click()
    expect(page.locator("#setpw-msg")).to_contain_text("Your password is set", timeout=WAIT_MS)
    screenshot(page, "set-password-done.png")

    # The same link a second time: used.
    again = new_page()
    set_password_in_page(again, link, "another-fine-passphrase-8")
    expect(again.locator("#setpw-msg")).to_contain_text("used already or has expired", timeout=WAIT_MS)

    # Sign in to the panel with email and password.
    panel = new_page()
    sign_in_to_panel(panel, system, "Olga.Oncall@example.com", "not-my-password-at-all")
    expect(panel.locator("#password-error")).to_contain_text("wrong", timeout=WAIT_MS)
    expect(panel.locator("#panel")).to_be_hidden()
    screenshot(panel, "panel-sign-in.png")
    panel.get_by_label("Password", exact=True).fill(PASSWORD)
    panel.get_by_role("button", name="Sign in", exact=True).click()
    expect(panel.locator("#panel")).to_be_visible(timeout=WAIT_MS)
    expect(panel.locator("#sw-mode")).not_to_have_text("–", timeout=WAIT_MS)
    claims = claims_in_tab(panel)
    assert claims["sub"] == account_id and claims["app_metadata"] == {"role": "admin"}
    expect(panel.locator("#accounts-rows")).to_contain_text("olga.oncall@example.com", timeout=WAIT_MS)

    panel.get_by_role("button", name="Sign out").click()
    expect(panel.locator("#signin")).to_be_visible()
    assert panel.evaluate("sessionStorage.length") == 0


def test_a_user_made_through_the_queue_sets_a_password_but_may_not_use_the_panel(system, stack, new_page):
    before = len(stack.ses.sent_messages())
    assert system.create_user("molly.member@example.com", "Molly Member").status_code == 202
    link = emailed_link(stack, "molly.member@example.com", after=before)
    page = new_page()
    set_password_in_page(page, link)
    expect(page.locator("#setpw-msg")).to_contain_text("Your password is set", timeout=WAIT_MS)
    sign_in_to_panel(page, system, "molly.member@example.com")
    expect(page.locator("#password-error")).to_contain_text("may not use the System Health panel", timeout=WAIT_MS)
    expect(page.locator("#panel")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0


def test_a_link_sent_before_the_fragment_form_still_sets_the_password_and_leaves_the_address_bar(
        system, stack, new_page):
    before = len(stack.ses.sent_messages())
    assert system.create_user("otto.oldlink@example.com", "Otto Oldlink").status_code == 202
    link = emailed_link(stack, "otto.oldlink@example.com", after=before)
    old_form = link.replace("/set-password#token=", "/set-password?token=")  # as emails sent before this change
    page = new_page()
    set_password_in_page(page, old_form)
    expect(page.locator("#setpw-msg")).to_contain_text("Your password is set", timeout=WAIT_MS)
    assert page.url == f"{system.url}/set-password"


def test_an_admin_makes_an_account_and_sends_its_welcome_again_from_the_panel(system, stack, new_page):
    page = new_page()
    load(page, system.panel_url(token=system.tokens["admin"], refresh=5))
    expect(page.locator("#panel")).to_be_visible(timeout=WAIT_MS)
    before = len(stack.ses.sent_messages())
    card = page.locator("#accounts")
    card.get_by_label("Email address").fill("vic.viewer@example.com")
    card.get_by_label("Full name").fill("Vic Viewer")
    card.get_by_label("Role").select_option("viewer")
    page.get_by_role("button", name="Create account").click()
    expect(page.locator("#accounts-msg")).to_contain_text("created", timeout=WAIT_MS)
    row = page.locator("#accounts-rows tr", has_text="vic.viewer@example.com")
    expect(row).to_contain_text("viewer", timeout=WAIT_MS)
    first = emailed_link(stack, "vic.viewer@example.com", after=before)

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name=re.compile("Send the welcome email again")).click()
    expect(page.locator("#accounts-msg")).to_contain_text("1 older link(s) revoked", timeout=WAIT_MS)
    second = emailed_link(stack, "vic.viewer@example.com", after=before + 1)
    assert second != first
    screenshot(page, "panel-accounts.png")
    old = system.http.post("/api/account/password",
                           json={"token": unquote(first.split("#token=", 1)[1]), "password": PASSWORD})
    assert old.status_code == 410


def staff_with_password(system: PanelSystem, stack: Any, email: str, role: str) -> str:
    """A staff account made through the API whose emailed link set PASSWORD: its id."""
    before = len(stack.ses.sent_messages())
    made = system.call("POST", "/api/admin/accounts", json={"email": email, "full_name": "Staff Person", "role": role})
    assert made.status_code == 201, made.text
    link = emailed_link(stack, email, after=before)
    done = system.http.post("/api/account/password",
                            json={"token": unquote(link.split("token=", 1)[1]), "password": PASSWORD})
    assert done.status_code == 204, done.text
    return str(made.json()["account"]["id"])


def api_session(system: PanelSystem, email: str) -> str:
    r = system.http.post("/api/auth/sign-in", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def accounts_status(system: PanelSystem, token: str) -> int:
    return system.http.get("/api/admin/accounts", headers={"Authorization": f"Bearer {token}"}).status_code


def change_in_dialog(page: Any, row: Any, button: str, confirm: str, reason: str, role: str | None = None) -> None:
    row.get_by_role("button", name=re.compile(button)).click()
    dialog = page.locator("#account-dialog")
    expect(dialog).to_be_visible(timeout=WAIT_MS)
    if role is not None:
        dialog.get_by_label("New role").select_option(role)
    dialog.get_by_label("Reason").fill(reason)
    dialog.get_by_role("button", name=confirm, exact=True).click()


def test_an_admin_disables_changes_the_role_and_ends_the_sessions_of_an_account_and_sign_out_ends_the_token(
        system, stack, new_page):
    staff_with_password(system, stack, "ada.admin@example.com", "admin")
    wendy = staff_with_password(system, stack, "wendy.viewer@example.com", "viewer")
    wendys_token = api_session(system, "wendy.viewer@example.com")
    assert accounts_status(system, wendys_token) == 200

    page = new_page()
    sign_in_to_panel(page, system, "ada.admin@example.com")
    expect(page.locator("#panel")).to_be_visible(timeout=WAIT_MS)
    row = page.locator("#accounts-rows tr", has_text="wendy.viewer@example.com")
    expect(row).to_contain_text("active", timeout=WAIT_MS)

    # Disable: a reason is required; the dialog says what happens; the account's token is refused at once.
    row.get_by_role("button", name="Disable wendy.viewer@example.com").click()
    dialog = page.locator("#account-dialog")
    expect(dialog).to_be_visible(timeout=WAIT_MS)
    expect(dialog).to_contain_text("every session of it ends")
    dialog.get_by_role("button", name="Disable", exact=True).click()
    expect(page.locator("#account-dialog-error")).to_contain_text("at least 3 characters")
    dialog.get_by_label("Reason").fill("left the company")
    expect(page.locator("#account-dialog-error")).to_have_text("")
    screenshot(page, "panel-account-disable.png", full_page=False)
    dialog.get_by_role("button", name="Disable", exact=True).click()
    expect(page.locator("#accounts-msg")).to_contain_text("is disabled", timeout=WAIT_MS)
    expect(row).to_contain_text("disabled", timeout=WAIT_MS)
    assert accounts_status(system, wendys_token) == 401
    assert system.http.post("/api/auth/sign-in", json={"email": "wendy.viewer@example.com",
                                                       "password": PASSWORD}).status_code == 401

    change_in_dialog(page, row, "Enable wendy", "Enable", "came back")
    expect(row).to_contain_text("active", timeout=WAIT_MS)
    assert accounts_status(system, wendys_token) == 401  # enabling does not revive the old session

    # Change role: the old token ends; the next sign-in carries the new role.
    wendys_token = api_session(system, "wendy.viewer@example.com")
    change_in_dialog(page, row, "Change the role of wendy", "Change role", "moved to sales", role="sales_manager")
    expect(row).to_contain_text("sales_manager", timeout=WAIT_MS)
    assert accounts_status(system, wendys_token) == 401
    wendys_token = api_session(system, "wendy.viewer@example.com")
    assert system.http.get("/api/users/requests",
                           headers={"Authorization": f"Bearer {wendys_token}"}).status_code == 200

    # End sessions: every token issued so far is refused.
    change_in_dialog(page, row, "End every session of wendy", "End sessions", "laptop stolen")
    expect(page.locator("#accounts-msg")).to_contain_text("has ended", timeout=WAIT_MS)
    assert system.http.get("/api/users/requests",
                           headers={"Authorization": f"Bearer {wendys_token}"}).status_code == 401
    expect(row).to_contain_text("active")
    page.locator("#accounts").scroll_into_view_if_needed()
    screenshot(page, "panel-accounts-lifecycle.png", full_page=False)

    # The admin's own account: refused with the reason shown in the dialog, nothing changed.
    own = page.locator("#accounts-rows tr", has_text="ada.admin@example.com")
    change_in_dialog(page, own, "Disable ada", "Disable", "trying to lock myself out")
    expect(page.locator("#account-dialog-error")).to_contain_text("your own account", timeout=WAIT_MS)
    page.locator("#account-dialog").get_by_role("button", name="Cancel").click()
    expect(page.locator("#account-dialog")).to_be_hidden()

    audit = system.sql("SELECT action, reason, actor FROM audit_log WHERE target = %s AND action <> 'account_created'"
                       " ORDER BY id", (wendy,))
    assert [(a["action"], a["reason"]) for a in audit] == [
        ("account_disabled", "left the company"), ("account_enabled", "came back"),
        ("account_role_changed", "moved to sales"), ("account_sessions_revoked", "laptop stolen")]
    assert len({a["actor"] for a in audit}) == 1

    # Sign out ends the admin's token on the server, not only in the tab.
    admins_token = page.evaluate("Object.values(sessionStorage)")[0]
    assert accounts_status(system, admins_token) == 200
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#signin")).to_be_visible(timeout=WAIT_MS)
    assert page.evaluate("sessionStorage.length") == 0
    wait_until(lambda: accounts_status(system, admins_token) == 401, 2, "the signed-out token still works")
