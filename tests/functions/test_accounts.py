"""Accounts through the real functions: the welcome link sets a password, sign-in issues the contract's token,
the throttle, staff accounts and the welcome email sent again. Real PostgreSQL, Redis and the SES emulator."""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import unquote

import jwt
import pytest
import redis
from argon2 import PasswordHasher

from shared.accounts.passwords import hasher
from shared.creation.mailer import Mailer
from tests.conftest import auth, make_settings, use_deps
from tests.functions.test_create_user import set_mode
from tests.support.stack import TEST_JWT_SECRET

GOOD_PASSWORD = "violet-harbour-trombone-42"
MEMBER = {"email": "Mia.Member@Example.com", "full_name": "Mia Member"}


def links_to(stack, address: str) -> list[str]:
    """The set-password tokens of every email sent to `address`, oldest first."""
    found = []
    for message in stack.ses.sent_messages():
        if address.lower() in [to.lower() for to in message["to"]]:
            match = re.search(r"/set-password#token=(\S+)", message["body"])
            assert match, message["body"]
            found.append(unquote(match.group(1)))
    return found


async def new_member(call, tokens, stack, body: dict[str, str] = MEMBER) -> tuple[str, str]:
    """A user made through POST /api/users (sync mode, so the welcome email is sent at once): (id, token)."""
    await set_mode(call, tokens, "sync_direct")
    r = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]), json=body)
    assert r.status_code == 201, r.text
    return r.json()["user"]["id"], links_to(stack, body["email"])[-1]


async def set_password(call, token: str, password: str = GOOD_PASSWORD):
    return await call("set_password", "POST", "/api/account/password", json={"token": token, "password": password})


async def sign_in(call, email: str, password: str = GOOD_PASSWORD, address: str = "198.51.100.7"):
    return await call("sign_in", "POST", "/api/auth/sign-in", json={"email": email, "password": password},
                      headers={"X-Forwarded-For": address})


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, TEST_JWT_SECRET, algorithms=["HS256"], audience="authenticated")


# ------------------------------------------------------------------------------------------- set password


async def test_the_welcome_link_sets_a_password_and_sign_in_returns_the_contract_token(call, tokens, stack, db):
    user_id, token = await new_member(call, tokens, stack)
    r = await set_password(call, token)
    assert r.status_code == 204, r.text
    row = db.execute("SELECT password_hash, password_set_at, role FROM users WHERE id = %s", (user_id,)).fetchone()
    assert row["password_hash"].startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert GOOD_PASSWORD not in row["password_hash"] and row["password_set_at"] is not None
    assert row["role"] == "member"

    r = await sign_in(call, "mia.member@EXAMPLE.com")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"
    c = claims(body["access_token"])
    assert c["sub"] == user_id and c["aud"] == "authenticated"
    assert c["app_metadata"] == {"role": "member"} and c["exp"] - c["iat"] == 3600
    assert c["iss"] == "provisioner" and re.fullmatch(r"[0-9a-f]{32}", c["jti"])
    assert abs(c["iat"] - time.time()) < 30
    # A member's token opens no staff route.
    denied = await call("get_mode", "GET", "/api/admin/system/mode", headers=auth(body["access_token"]))
    assert denied.status_code == 403
    denied = await call("create_user", "POST", "/api/users", headers=auth(body["access_token"]),
                        json={"email": "x@example.com", "full_name": "X"})
    assert denied.status_code == 403

    events = db.execute("SELECT event, message, metadata::text AS meta FROM system_health_logs"
                        " WHERE event IN ('password_set', 'signed_in') ORDER BY id").fetchall()
    assert [e["event"] for e in events] == ["password_set", "signed_in"]
    for e in events:
        for secret in (token, GOOD_PASSWORD, "mia.member", "Mia.Member"):
            assert secret not in e["message"] + e["meta"]


async def test_the_page_is_served_with_the_panel_policy(call):
    r = await call("set_password_page", "GET", "/set-password?token=anything")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["referrer-policy"] == "no-referrer"
    assert '/admin/assets/set-password.js' in r.text and "<script>" not in r.text


async def test_a_link_works_once(call, tokens, stack, db):
    user_id, token = await new_member(call, tokens, stack)
    assert (await set_password(call, token)).status_code == 204
    first = db.execute("SELECT password_hash FROM users WHERE id = %s", (user_id,)).fetchone()["password_hash"]
    again = await set_password(call, token, "another-long-passphrase-77")
    assert again.status_code == 410 and again.json()["error"]["code"] == "link_gone"
    assert db.execute("SELECT password_hash FROM users WHERE id = %s", (user_id,)).fetchone()["password_hash"] == first
    assert (await sign_in(call, MEMBER["email"], "another-long-passphrase-77")).status_code == 401
    refused = db.execute("SELECT metadata FROM system_health_logs WHERE event = 'password_link_refused'").fetchall()
    assert [r["metadata"]["reason"] for r in refused] == ["used"]


async def test_unknown_link_is_404(call, deps):
    r = await set_password(call, "no-such-token")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_an_expired_link_is_410_and_sets_nothing(call, tokens, stack, db):
    user_id, token = await new_member(call, tokens, stack)
    # The database's clock decides: the link was made 73 h ago.
    db.execute("UPDATE password_setup_tokens SET expires_at = now() - interval '1 hour',"
               " created_at = now() - interval '73 hours' WHERE user_id = %s", (user_id,))
    r = await set_password(call, token)
    assert r.status_code == 410
    assert db.execute("SELECT password_hash FROM users WHERE id = %s", (user_id,)).fetchone()["password_hash"] is None


async def test_the_link_expires_after_72_hours(call, tokens, stack, db):
    user_id, _ = await new_member(call, tokens, stack)
    row = db.execute("SELECT expires_at - created_at AS ttl FROM password_setup_tokens WHERE user_id = %s",
                     (user_id,)).fetchone()
    assert abs(row["ttl"].total_seconds() - 72 * 3600) < 5


@pytest.mark.parametrize(("password", "kind"), [
    ("short-pw-1", "too_short"),
    ("x" * 129, "too_long"),
    ("MIA.MEMBER@example.com", "is_email"),
    ("password1234", "too_common"),
    ("qwertyuiop123", "too_common"),
    ("aaaaaaaaaaaaaaaa", "too_common"),
])
async def test_a_weak_password_is_422_and_the_link_still_works(call, tokens, stack, db, password, kind):
    user_id, token = await new_member(call, tokens, stack)
    r = await set_password(call, token, password)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == "password"
    assert r.json()["error"]["details"][0]["type"] == kind
    assert password not in r.text
    assert db.execute("SELECT password_hash FROM users WHERE id = %s", (user_id,)).fetchone()["password_hash"] is None
    assert (await set_password(call, token)).status_code == 204


@pytest.mark.parametrize("payload", [{}, {"token": "t"}, {"password": GOOD_PASSWORD}, {"token": 1, "password": "x"},
                                     {"token": "t", "password": GOOD_PASSWORD, "extra": 1}, [], "text"])
async def test_a_bad_body_is_422(call, deps, payload):
    r = await call("set_password", "POST", "/api/account/password", json=payload)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"


async def test_setting_a_password_kills_every_other_link_of_the_account(call, tokens, stack, db):
    user_id, first = await new_member(call, tokens, stack)
    admin = auth(tokens["admin"])
    # A second welcome email (the first one's link dies at once); then make the first link live again in the
    # database, as if two emails were in flight, to see that setting a password kills the other one.
    r = await call("resend_welcome", "POST", f"/api/admin/accounts/{user_id}/welcome", headers=admin)
    assert r.status_code == 200, r.text
    second = links_to(stack, MEMBER["email"])[-1]
    assert second != first
    db.execute("UPDATE password_setup_tokens SET used_at = NULL WHERE user_id = %s", (user_id,))
    assert (await set_password(call, second)).status_code == 204
    assert (await set_password(call, first)).status_code == 410
    left = db.execute("SELECT count(*) AS n FROM password_setup_tokens WHERE user_id = %s AND used_at IS NULL",
                      (user_id,)).fetchone()
    assert left["n"] == 0


# ------------------------------------------------------------------------------------------------- sign-in


async def test_wrong_email_wrong_password_and_no_password_yet_get_the_same_401(call, tokens, stack):
    _, token = await new_member(call, tokens, stack)
    no_password_yet = await sign_in(call, MEMBER["email"], GOOD_PASSWORD, address="203.0.113.1")
    assert (await set_password(call, token)).status_code == 204
    wrong_password = await sign_in(call, MEMBER["email"], "not-the-password-at-all", address="203.0.113.2")
    wrong_email = await sign_in(call, "nobody@example.com", GOOD_PASSWORD, address="203.0.113.3")
    answers = [no_password_yet, wrong_password, wrong_email]
    assert [a.status_code for a in answers] == [401, 401, 401]
    assert len({a.text for a in answers}) == 1


@pytest.mark.parametrize("payload", [{}, {"email": "a@example.com"}, {"email": 3, "password": "x"},
                                     {"email": "a@example.com", "password": "x", "remember": True}])
async def test_a_bad_sign_in_body_is_422(call, deps, payload):
    r = await call("sign_in", "POST", "/api/auth/sign-in", json=payload)
    assert r.status_code == 422


async def test_an_attackers_client_is_locked_out_while_the_owner_signs_in_from_another(call, tokens, stack, db,
                                                                                       monkeypatch, deps, deps_factory):
    """The attacker's failures land on two instances in turn and its next attempt on a third: the count is shared
    by every instance, and it is the attacker's (account, client) count, not the account's."""
    _, token = await new_member(call, tokens, stack)
    assert (await set_password(call, token)).status_code == 204
    attacker, owner = "192.0.2.66", "198.51.100.8"
    instances = [await deps_factory(INSTANCE_NAME=f"signin-{n}") for n in range(3)]
    for i in range(5):
        use_deps(monkeypatch, instances[i % 2])
        r = await sign_in(call, MEMBER["email"], f"wrong-guess-number-{i}", address=attacker)
        assert r.status_code == 401
    # The attacker's client is refused by a third instance even with the right password, before any password check...
    use_deps(monkeypatch, instances[2])
    r = await sign_in(call, MEMBER["email"], GOOD_PASSWORD, address=attacker)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 900
    # ...while the owner, from another client, signs in with the right password.
    r = await sign_in(call, MEMBER["email"], GOOD_PASSWORD, address=owner)
    assert r.status_code == 200, r.text
    # The attacker's client may still try other accounts (its own per-client budget), and stays locked on this one.
    assert (await sign_in(call, "someone.else@example.com", address=attacker)).status_code == 401
    assert (await sign_in(call, MEMBER["email"], GOOD_PASSWORD, address=attacker)).status_code == 429
    event = db.execute("SELECT level, metadata FROM system_health_logs WHERE event = 'sign_in_throttled'").fetchall()
    assert len(event) == 1 and event[0]["level"] == "WARNING" and event[0]["metadata"]["scope"] == "account_client"


async def test_a_disabled_account_gets_the_same_401_as_a_wrong_password(call, tokens, stack, db):
    user_id, token = await new_member(call, tokens, stack)
    assert (await set_password(call, token)).status_code == 204
    wrong = await sign_in(call, MEMBER["email"], "not-the-password-at-all", address="203.0.113.11")
    r = await call("disable_account", "POST", f"/api/admin/accounts/{user_id}/disable",
                   headers=auth(tokens["admin"]), json={"reason": "left the company"})
    assert r.status_code == 200 and r.json()["disabled"] is True
    started = time.perf_counter()
    disabled = await sign_in(call, MEMBER["email"], GOOD_PASSWORD, address="203.0.113.12")
    elapsed = time.perf_counter() - started
    assert disabled.status_code == wrong.status_code == 401
    assert disabled.text == wrong.text
    assert elapsed >= 0.05  # the same work: the Argon2id verification ran (about 150 ms), not a quick refusal


async def test_the_account_ceiling_alerts_through_the_watchdog_and_never_locks_the_owner(
        monkeypatch, call, tokens, stack, db, deps, deps_factory):
    user_id, token = await new_member(call, tokens, stack)
    assert (await set_password(call, token)).status_code == 204
    db.execute("TRUNCATE alert_states, alert_outbox RESTART IDENTITY")
    use_deps(monkeypatch, await deps_factory(SIGN_IN_ACCOUNT_ALERT_AT=10))
    try:
        # Ten attacker clients, one guess each: no client reaches its limit, the account reaches its ceiling.
        for i in range(10):
            r = await sign_in(call, MEMBER["email"], f"botnet-guess-{i}-pw", address=f"192.0.2.{100 + i}")
            assert r.status_code == 401
        # The owner is not locked out.
        assert (await sign_in(call, MEMBER["email"], address="198.51.100.9")).status_code == 200
        events = db.execute("SELECT level, metadata FROM system_health_logs WHERE event = 'sign_in_attack'").fetchall()
        assert [(e["level"], e["metadata"]["user_id"], e["metadata"]["attempts"]) for e in events] == [
            ("WARNING", user_id, 10)]
        watchdog = await call("alert_watchdog", "POST", "/api/admin/system/watchdog", headers=auth(tokens["admin"]))
        assert watchdog.status_code == 200
        assert {t["event"]: t["state"] for t in watchdog.json()["transitions"]}.get("sign_in_attack") == "firing"
        again = await call("alert_watchdog", "POST", "/api/admin/system/watchdog", headers=auth(tokens["admin"]))
        assert "sign_in_attack" not in {t["event"] for t in again.json()["transitions"]}  # once per episode
        db.execute("UPDATE system_health_logs SET created_at = now() - interval '1 hour'"
                   " WHERE event = 'sign_in_attack'")  # a whole alert window without an attack
        over = await call("alert_watchdog", "POST", "/api/admin/system/watchdog", headers=auth(tokens["admin"]))
        assert {t["event"]: t["state"] for t in over.json()["transitions"]}.get("sign_in_attack") == "resolved"
    finally:
        use_deps(monkeypatch, deps)
    # The alert and its event name the account by id only: no address, no client.
    dump = str(db.execute("SELECT message FROM alert_states").fetchall()) + str(events)
    assert "mia" not in dump.lower() and "192.0.2" not in dump and "198.51" not in dump


async def test_a_success_resets_the_account_counter(call, tokens, stack):
    _, token = await new_member(call, tokens, stack)
    assert (await set_password(call, token)).status_code == 204
    for i in range(4):
        assert (await sign_in(call, MEMBER["email"], f"wrong-{i}-password")).status_code == 401
    assert (await sign_in(call, MEMBER["email"])).status_code == 200
    for i in range(4):
        assert (await sign_in(call, MEMBER["email"], f"wrong-{i}-again-pw")).status_code == 401
    assert (await sign_in(call, MEMBER["email"])).status_code == 200


async def test_twenty_failures_from_one_address_lock_that_address(call, deps, db, monkeypatch, deps_factory):
    instances = [await deps_factory(INSTANCE_NAME=f"signin-{n}") for n in range(3)]
    for i in range(20):  # on two instances in turn; the 21st attempt on a third
        use_deps(monkeypatch, instances[i % 2])
        r = await sign_in(call, f"guess{i}@example.com", "some-password-here", address="198.51.100.20")
        assert r.status_code == 401
    use_deps(monkeypatch, instances[2])
    r = await sign_in(call, "guess-next@example.com", "some-password-here", address="198.51.100.20")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    # Only the last X-Forwarded-For entry (the one our proxy appends) counts: a forged one changes nothing.
    r = await sign_in(call, "guess-next@example.com", "some-password-here", address="10.9.9.9, 198.51.100.20")
    assert r.status_code == 429
    r = await sign_in(call, "guess-next@example.com", "some-password-here", address="198.51.100.21")
    assert r.status_code == 401
    event = db.execute("SELECT level, metadata FROM system_health_logs WHERE event = 'sign_in_throttled'").fetchall()
    assert len(event) == 1 and event[0]["level"] == "WARNING" and event[0]["metadata"]["scope"] == "client"


async def test_redis_holds_no_address_email_or_password(call, tokens, stack):
    _, token = await new_member(call, tokens, stack)
    assert (await set_password(call, token)).status_code == 204
    await sign_in(call, MEMBER["email"], "a-wrong-password-here", address="198.51.100.77")
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        keys = [k for k in client.scan_iter(match=f"{stack.queue_prefix}:sign-in:*")]
        assert len(keys) == 3  # (account, client), client, account
        dump = " ".join(keys + [str(client.get(k)) for k in keys]).lower()
    finally:
        client.close()
    for secret in ("mia", "example.com", "198.51.100.77", "a-wrong-password-here", GOOD_PASSWORD):
        assert secret not in dump


async def test_an_old_hash_is_rehashed_on_the_next_sign_in(call, tokens, stack, db):
    user_id, _ = await new_member(call, tokens, stack)
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(GOOD_PASSWORD)
    db.execute("UPDATE users SET password_hash = %s, password_set_at = now() WHERE id = %s", (weak, user_id))
    r = await sign_in(call, MEMBER["email"])
    assert r.status_code == 200
    stored = db.execute("SELECT password_hash FROM users WHERE id = %s", (user_id,)).fetchone()["password_hash"]
    assert stored != weak and stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert hasher().verify(stored, GOOD_PASSWORD)
    event = db.execute("SELECT metadata FROM system_health_logs WHERE event = 'signed_in'").fetchone()
    assert event["metadata"]["rehashed"] is True
    # Current parameters: no second rehash.
    assert (await sign_in(call, MEMBER["email"])).status_code == 200
    assert db.execute("SELECT password_hash FROM users WHERE id = %s", (user_id,)).fetchone()["password_hash"] == stored


async def test_sign_in_works_without_redis_and_says_so(monkeypatch, call, tokens, stack, db, deps, deps_factory):
    _, token = await new_member(call, tokens, stack)
    assert (await set_password(call, token)).status_code == 204
    blind = await deps_factory(REDIS_URL="redis://127.0.0.1:1/0")
    use_deps(monkeypatch, blind)
    try:
        r = await sign_in(call, MEMBER["email"])
        assert r.status_code == 200
        events = db.execute("SELECT level FROM system_health_logs WHERE event = 'sign_in_throttle_unavailable'"
                            ).fetchall()
        assert [e["level"] for e in events] == ["WARNING"]
    finally:
        use_deps(monkeypatch, deps)
    assert (await sign_in(call, MEMBER["email"])).status_code == 200
    restored = db.execute("SELECT count(*) AS n FROM system_health_logs WHERE event = 'sign_in_throttle_restored'"
                          ).fetchone()
    assert restored["n"] == 1


# ------------------------------------------------------------------------------------------ staff accounts


async def test_an_admin_makes_a_viewer_who_signs_in_and_may_not_change_anything(call, tokens, stack, db):
    r = await call("create_account", "POST", "/api/admin/accounts", headers=auth(tokens["admin"]),
                   json={"email": "Vera.Viewer@example.com", "full_name": "Vera Viewer", "role": "viewer"})
    assert r.status_code == 201, r.text
    account = r.json()["account"]
    assert account["role"] == "viewer" and account["password_set_at"] is None and r.json()["email"] == "sent"
    audit = db.execute("SELECT actor, action, target, after FROM audit_log WHERE action = 'account_created'"
                       " AND target = %s", (account["id"],)).fetchall()
    assert len(audit) == 1 and audit[0]["actor"] == "admin-1" and audit[0]["after"]["role"] == "viewer"

    token = links_to(stack, "Vera.Viewer@example.com")[-1]
    assert (await set_password(call, token)).status_code == 204
    r = await sign_in(call, "vera.viewer@example.com")
    assert r.status_code == 200
    viewer = r.json()["access_token"]
    assert claims(viewer)["app_metadata"]["role"] == "viewer" and claims(viewer)["sub"] == account["id"]
    for name, path, body in [("set_mode", "/api/admin/system/mode", {"mode": "sync_direct", "reason": "try it"}),
                             ("create_account", "/api/admin/accounts",
                              {"email": "x@example.com", "full_name": "X", "role": "admin"})]:
        denied = await call(name, "POST", path, headers=auth(viewer), json=body)
        assert denied.status_code == 403, name
    listed = await call("list_accounts", "GET", "/api/admin/accounts", headers=auth(viewer))
    assert listed.status_code == 200 and [a["email"] for a in listed.json()["items"]] == ["Vera.Viewer@example.com"]


async def test_members_are_not_listed_as_staff(call, tokens, stack):
    await new_member(call, tokens, stack)
    r = await call("create_account", "POST", "/api/admin/accounts", headers=auth(tokens["admin"]),
                   json={"email": "sam@example.com", "full_name": "Sam Sales", "role": "sales_manager"})
    assert r.status_code == 201
    listed = (await call("list_accounts", "GET", "/api/admin/accounts", headers=auth(tokens["admin"]))).json()
    assert [(a["email"], a["role"]) for a in listed["items"]] == [("sam@example.com", "sales_manager")]


@pytest.mark.parametrize("payload", [
    {"email": "a@example.com", "full_name": "A", "role": "member"},
    {"email": "a@example.com", "full_name": "A", "role": "root"},
    {"email": "a@example.com", "full_name": "A"},
    {"email": "not-an-address", "full_name": "A", "role": "admin"},
    {"email": "a@example.com", "full_name": "A", "role": "admin", "password": "x"},
])
async def test_a_bad_account_is_422_and_writes_nothing(call, tokens, db, payload):
    r = await call("create_account", "POST", "/api/admin/accounts", headers=auth(tokens["admin"]), json=payload)
    assert r.status_code == 422
    assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 0
    assert db.execute("SELECT count(*) AS n FROM creation_requests").fetchone()["n"] == 0


async def test_only_an_admin_makes_accounts_and_an_address_is_used_once(call, tokens, stack):
    body = {"email": "dup@example.com", "full_name": "Dup", "role": "admin"}
    r = await call("create_account", "POST", "/api/admin/accounts", headers=auth(tokens["sales_manager"]), json=body)
    assert r.status_code == 403
    assert (await call("create_account", "POST", "/api/admin/accounts", headers=auth(tokens["admin"]),
                       json=body)).status_code == 201
    again = await call("create_account", "POST", "/api/admin/accounts", headers=auth(tokens["admin"]),
                       json={**body, "email": "DUP@example.com"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "user_exists"


async def test_resending_the_welcome_kills_the_old_link_and_is_audited(call, tokens, stack, db):
    user_id, old = await new_member(call, tokens, stack)
    r = await call("resend_welcome", "POST", f"/api/admin/accounts/{user_id}/welcome", headers=auth(tokens["admin"]))
    assert r.status_code == 200, r.text
    assert r.json() == {"account_id": user_id, "email": "sent", "links_revoked": 1}
    new = links_to(stack, MEMBER["email"])[-1]
    assert (await set_password(call, old)).status_code == 410
    assert (await set_password(call, new)).status_code == 204
    audit = db.execute("SELECT actor, after FROM audit_log WHERE action = 'welcome_resent' AND target = %s",
                       (user_id,)).fetchall()
    assert len(audit) == 1 and audit[0]["actor"] == "admin-1"


async def test_the_old_link_dies_at_once_even_when_the_new_email_cannot_be_sent_now(monkeypatch, call, tokens, stack,
                                                                                   db,
                                                                                   deps, deps_factory):
    user_id, old = await new_member(call, tokens, stack)
    no_ses = make_settings(stack, AWS_ENDPOINT_URL_SES="http://127.0.0.1:1", EMAIL_SEND_TIMEOUT_S=2)
    use_deps(monkeypatch, await deps_factory(mailer=Mailer(no_ses)))
    try:
        r = await call("resend_welcome", "POST", f"/api/admin/accounts/{user_id}/welcome",
                       headers=auth(tokens["admin"]))
    finally:
        use_deps(monkeypatch, deps)
    assert r.status_code == 200 and r.json()["email"] == "pending" and r.json()["links_revoked"] == 1
    assert (await set_password(call, old)).status_code == 410
    outbox = db.execute("SELECT status, attempts FROM email_outbox WHERE user_id = %s", (user_id,)).fetchone()
    assert outbox == {"status": "pending", "attempts": 1}  # the outbox retries it


@pytest.mark.parametrize("account_id", ["00000000-0000-0000-0000-000000000000", "not-a-uuid"])
async def test_resending_to_an_unknown_account_is_404(call, tokens, deps, account_id):
    r = await call("resend_welcome", "POST", f"/api/admin/accounts/{account_id}/welcome",
                   headers=auth(tokens["admin"]))
    assert r.status_code == 404


async def test_only_an_admin_resends(call, tokens, stack):
    user_id, _ = await new_member(call, tokens, stack)
    r = await call("resend_welcome", "POST", f"/api/admin/accounts/{user_id}/welcome",
                   headers=auth(tokens["sales_manager"]))
    assert r.status_code == 403
