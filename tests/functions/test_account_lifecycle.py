"""An account's life through the real functions: disable, enable, role change, sessions revoked, sign-out, and a
password set, each ending the right tokens. Real PostgreSQL, Redis and the SES emulator; in-process functions
(the multi-instance bound is tests/integration/test_sessions.py)."""

from __future__ import annotations

import pytest

from tests.conftest import auth
from tests.functions.test_accounts import GOOD_PASSWORD, claims, links_to, set_password, sign_in

ADMIN_ADDRESS = "Ada.Admin@example.com"


async def staff_account(call, tokens, stack, email: str, role: str) -> str:
    """A staff account with its password set: its id."""
    r = await call("create_account", "POST", "/api/admin/accounts", headers=auth(tokens["admin"]),
                   json={"email": email, "full_name": "Staff Person", "role": role})
    assert r.status_code == 201, r.text
    assert (await set_password(call, links_to(stack, email)[-1])).status_code == 204
    return r.json()["account"]["id"]


async def session(call, email: str, address: str = "198.51.100.30") -> str:
    r = await sign_in(call, email, address=address)
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


async def accounts_with(call, token: str) -> int:
    return (await call("list_accounts", "GET", "/api/admin/accounts", headers=auth(token))).status_code


async def test_disable_ends_sessions_refuses_sign_in_and_set_password_and_enable_lets_in_again(call, tokens, stack,
                                                                                             db):
    account_id = await staff_account(call, tokens, stack, "vic.viewer@example.com", "viewer")
    token = await session(call, "vic.viewer@example.com")
    assert await accounts_with(call, token) == 200
    admin = auth(tokens["admin"])
    r = await call("disable_account", "POST", f"/api/admin/accounts/{account_id}/disable", headers=admin,
                   json={"reason": "left the company"})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == account_id and r.json()["disabled"] is True and r.json()["role"] == "viewer"
    refused = await call("list_accounts", "GET", "/api/admin/accounts", headers=auth(token))
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert (await sign_in(call, "vic.viewer@example.com")).status_code == 401
    # A fresh welcome link cannot set a password while the account is disabled.
    assert (await call("resend_welcome", "POST", f"/api/admin/accounts/{account_id}/welcome",
                       headers=admin)).status_code == 200
    assert (await set_password(call, links_to(stack, "vic.viewer@example.com")[-1],
                               "another-long-passphrase-77")).status_code == 410
    listed = (await call("list_accounts", "GET", "/api/admin/accounts", headers=admin)).json()["items"]
    assert [a["disabled"] for a in listed if a["id"] == account_id] == [True]

    r = await call("enable_account", "POST", f"/api/admin/accounts/{account_id}/enable", headers=admin,
                   json={"reason": "came back"})
    assert r.status_code == 200 and r.json()["disabled"] is False
    assert await accounts_with(call, token) == 401  # the old session stays ended
    assert await accounts_with(call, await session(call, "vic.viewer@example.com")) == 200

    audit = db.execute("SELECT actor, action, reason, before, after FROM audit_log WHERE target = %s"
                       " AND action LIKE 'account_%%abled' ORDER BY id", (account_id,)).fetchall()
    assert [(a["action"], a["reason"], a["before"]["disabled"], a["after"]["disabled"]) for a in audit] == [
        ("account_disabled", "left the company", False, True), ("account_enabled", "came back", True, False)]
    assert {a["actor"] for a in audit} == {"admin-1"}
    assert "vic" not in str(audit).lower()
    events = db.execute("SELECT event, level FROM system_health_logs WHERE event LIKE 'account_%%abled' ORDER BY id"
                        ).fetchall()
    assert [(e["event"], e["level"]) for e in events] == [("account_disabled", "WARNING"), ("account_enabled", "INFO")]


async def test_a_role_change_ends_older_tokens_and_the_new_token_has_the_new_role(call, tokens, stack, db):
    account_id = await staff_account(call, tokens, stack, "sam.sales@example.com", "sales_manager")
    old = await session(call, "sam.sales@example.com")
    r = await call("change_account_role", "PATCH", f"/api/admin/accounts/{account_id}",
                   headers=auth(tokens["admin"]), json={"role": "viewer", "reason": "moved to reporting"})
    assert r.status_code == 200 and r.json()["role"] == "viewer"
    assert (await call("my_requests", "GET", "/api/users/requests", headers=auth(old))).status_code == 401
    new = await session(call, "sam.sales@example.com")  # signs in within the same second: waits for the next
    assert claims(new)["app_metadata"]["role"] == "viewer"
    assert claims(new)["iat"] > claims(old)["iat"]
    assert await accounts_with(call, new) == 200
    denied = await call("create_user", "POST", "/api/users", headers=auth(new),
                        json={"email": "x@example.com", "full_name": "X"})
    assert denied.status_code == 403
    audit = db.execute("SELECT before, after, reason FROM audit_log WHERE action = 'account_role_changed'").fetchall()
    assert [(a["before"]["role"], a["after"]["role"], a["reason"]) for a in audit] == [
        ("sales_manager", "viewer", "moved to reporting")]
    # The same role again changes and writes nothing.
    same = await call("change_account_role", "PATCH", f"/api/admin/accounts/{account_id}",
                      headers=auth(tokens["admin"]), json={"role": "viewer", "reason": "again"})
    assert same.status_code == 200
    assert await accounts_with(call, new) == 200
    assert db.execute("SELECT count(*) AS n FROM audit_log WHERE action = 'account_role_changed'").fetchone()["n"] == 1


async def test_revoking_sessions_ends_every_token_issued_before_and_sign_in_works_again(call, tokens, stack, db):
    account_id = await staff_account(call, tokens, stack, "vera.v@example.com", "viewer")
    first, second = await session(call, "vera.v@example.com"), await session(call, "vera.v@example.com", "10.1.1.1")
    r = await call("revoke_sessions", "POST", f"/api/admin/accounts/{account_id}/sessions/revoke",
                   headers=auth(tokens["admin"]), json={"reason": "laptop stolen"})
    assert r.status_code == 200, r.text
    assert r.json()["account_id"] == account_id and r.json()["revoked_before"].startswith("20")
    assert [await accounts_with(call, t) for t in (first, second)] == [401, 401]
    assert await accounts_with(call, await session(call, "vera.v@example.com")) == 200
    audit = db.execute("SELECT actor, reason FROM audit_log WHERE action = 'account_sessions_revoked'").fetchall()
    assert audit == [{"actor": "admin-1", "reason": "laptop stolen"}]


async def test_sign_out_ends_only_that_token(call, tokens, stack, db):
    await staff_account(call, tokens, stack, "otto.out@example.com", "viewer")
    phone, laptop = await session(call, "otto.out@example.com"), await session(call, "otto.out@example.com", "10.2.2.2")
    r = await call("sign_out", "POST", "/api/auth/sign-out", headers=auth(phone))
    assert r.status_code == 204 and r.content == b""
    assert await accounts_with(call, phone) == 401
    assert await accounts_with(call, laptop) == 200
    again = await call("sign_out", "POST", "/api/auth/sign-out", headers=auth(phone))
    assert again.status_code == 401
    row = db.execute("SELECT jti, expires_at > now() AS live FROM revoked_tokens").fetchall()
    assert row == [{"jti": claims(phone)["jti"], "live": True}]


async def test_a_member_signs_out_and_other_tokens_keep_working(call, tokens, stack):
    from tests.functions.test_accounts import MEMBER, new_member

    _, link = await new_member(call, tokens, stack)
    assert (await set_password(call, link)).status_code == 204
    member = await session(call, MEMBER["email"])
    assert (await call("sign_out", "POST", "/api/auth/sign-out", headers=auth(member))).status_code == 204
    assert (await call("sign_out", "POST", "/api/auth/sign-out", headers=auth(member))).status_code == 401
    # A token not issued by our sign-in (invoke token) has no session to end: it keeps working.
    assert (await call("sign_out", "POST", "/api/auth/sign-out", headers=auth(tokens["viewer"]))).status_code == 204
    assert await accounts_with(call, tokens["viewer"]) == 200


async def test_setting_a_new_password_ends_older_tokens(call, tokens, stack):
    account_id = await staff_account(call, tokens, stack, "pat.pw@example.com", "viewer")
    old = await session(call, "pat.pw@example.com")
    assert (await call("resend_welcome", "POST", f"/api/admin/accounts/{account_id}/welcome",
                       headers=auth(tokens["admin"]))).status_code == 200
    new_password = "a-brand-new-passphrase-19"
    assert (await set_password(call, links_to(stack, "pat.pw@example.com")[-1], new_password)).status_code == 204
    assert await accounts_with(call, old) == 401
    r = await sign_in(call, "pat.pw@example.com", new_password)
    assert r.status_code == 200 and await accounts_with(call, r.json()["access_token"]) == 200
    assert (await sign_in(call, "pat.pw@example.com", GOOD_PASSWORD)).status_code == 401


async def test_nobody_locks_themself_or_everyone_out(call, tokens, stack, db):
    ada = await staff_account(call, tokens, stack, ADMIN_ADDRESS, "admin")
    own = auth(await session(call, ADMIN_ADDRESS))
    for name, method, path, body in [
        ("disable_account", "POST", f"/api/admin/accounts/{ada}/disable", {"reason": "oops"}),
        ("change_account_role", "PATCH", f"/api/admin/accounts/{ada}", {"role": "viewer", "reason": "oops"})]:
        r = await call(name, method, path, headers=own, json=body)
        assert r.status_code == 409 and r.json()["error"]["details"]["reason"] == "own_account", name
        # Another admin (here: a token not of an account) may not remove the last enabled admin account either.
        r = await call(name, method, path, headers=auth(tokens["admin"]), json=body)
        assert r.status_code == 409 and r.json()["error"]["details"]["reason"] == "last_admin", name
    bob = await staff_account(call, tokens, stack, "bob.admin@example.com", "admin")
    r = await call("disable_account", "POST", f"/api/admin/accounts/{bob}/disable", headers=own,
                   json={"reason": "two admins: one may go"})
    assert r.status_code == 200 and r.json()["disabled"] is True
    assert db.execute("SELECT count(*) AS n FROM audit_log WHERE action = 'account_disabled'").fetchone()["n"] == 1


@pytest.mark.parametrize(("name", "method", "suffix"), [
    ("disable_account", "POST", "/disable"), ("enable_account", "POST", "/enable"),
    ("change_account_role", "PATCH", ""), ("revoke_sessions", "POST", "/sessions/revoke")])
async def test_unknown_id_404_viewer_403_bad_body_422_and_nothing_written(call, tokens, stack, db, name, method,
                                                                          suffix):
    account_id = await staff_account(call, tokens, stack, "tess.target@example.com", "sales_manager")
    good = {"reason": "a good reason", **({"role": "viewer"} if name == "change_account_role" else {})}
    admin = auth(tokens["admin"])
    for unknown in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        r = await call(name, method, f"/api/admin/accounts/{unknown}{suffix}", headers=admin, json=good)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    path = f"/api/admin/accounts/{account_id}{suffix}"
    for who in ("viewer", "sales_manager"):
        assert (await call(name, method, path, headers=auth(tokens[who]), json=good)).status_code == 403
    assert (await call(name, method, path, json=good)).status_code == 401
    bad = [{}, {"reason": "no"}, {"reason": "   x  "}, {"reason": "x" * 501}, {**good, "extra": 1}, [], "text"]
    if name == "change_account_role":
        bad += [{"reason": "a good reason"}, {"role": "root", "reason": "a good reason"},
                {"role": "scheduler", "reason": "a good reason"}]
    for body in bad:
        r = await call(name, method, path, headers=admin, json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input", body
    assert db.execute("SELECT count(*) AS n FROM audit_log WHERE action LIKE 'account\\_%%' AND action <>"
                      " 'account_created'").fetchone()["n"] == 0
    row = db.execute("SELECT role, disabled_at, tokens_valid_after FROM users WHERE id = %s", (account_id,)).fetchone()
    assert row == {"role": "sales_manager", "disabled_at": None, "tokens_valid_after": None}


async def test_an_erased_persons_session_is_refused(call, tokens, stack):
    account_id = await staff_account(call, tokens, stack, "erin.erased@example.com", "viewer")
    token = await session(call, "erin.erased@example.com")
    assert await accounts_with(call, token) == 200
    r = await call("erase_user", "POST", f"/api/admin/users/{account_id}/erase", headers=auth(tokens["admin"]),
                   json={"reason": "right to erasure"})
    assert r.status_code == 200, r.text
    refused = await call("list_accounts", "GET", "/api/admin/accounts", headers=auth(token))
    assert refused.status_code == 401
