"""Personal data kept only as long as needed (docs/personal-data.md): erase a person, the retention pass of the
scheduled cleanup, and the scan that proves what is left. Real PostgreSQL, Redis, SES emulator and a real
consumer process; the scan is `invoke pii-scan`'s (shared/operations/pii_scan.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import redis

from shared.accounts.signin_throttle import _digest as sign_in_key
from shared.core.auth import Principal, Role
from shared.creation.creation import create_user_request
from shared.creation.models import CreateUserCommand
from shared.creation.outbox import EmailClaim, send_claimed
from shared.operations.maintenance import run_cleanup
from shared.operations.pii_scan import scan
from tests.conftest import auth, wait_until
from tests.functions.test_bulk import csv_file, upload
from tests.integration.test_consumer import all_done, start_consumer, trap  # noqa: F401 (a fixture)
from tests.support.stack import Stack

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "violet-harbour-trombone-42"
# The person erased, and a bystander whose data must stay.
ERASED = {"email": "Priya.Erasmus-Quell@example.com", "full_name": "Priya Erasmus-Quell", "phone": "+44 20 7946 0321"}
KEPT = {"email": "kept.bystander@example.com", "full_name": "Kept Bystander", "phone": "+44 20 7946 0777"}


def full_scan(stack: Stack, person: dict[str, str]) -> list[str]:
    return scan(stack.database_url, stack.redis_url, stack.queue_prefix,
                [person["email"], person["full_name"], person["phone"]]).findings


def welcome_link(stack: Stack, address: str) -> str:
    links = [re.search(r"http://\S+/set-password\S*", m["body"]).group(0)  # type: ignore[union-attr]
             for m in stack.ses.sent_messages() if address.lower() in (to.lower() for to in m["to"])]
    assert links, f"no welcome email to {address}"
    return links[-1]


async def created_through_the_queue(call, tokens, db, person: dict[str, str], key: str | None = None
                                    ) -> tuple[str, str]:
    """POST /api/users -> 202, the consumer process creates the user and sends the email: (request, user id)."""
    headers = {**auth(tokens["sales_manager"]), **({"Idempotency-Key": key} if key else {})}
    r = await call("create_user", "POST", "/api/users", headers=headers, json=person)
    assert r.status_code == 202, r.text
    request_id = r.json()["request_id"]
    assert (await all_done(db, [request_id], timeout=30))[request_id] == "created"
    await wait_until(lambda: db.execute("SELECT 1 FROM email_outbox o JOIN creation_requests r ON r.user_id ="
                                        " o.user_id WHERE r.id = %s AND o.status = 'sent'", (request_id,)
                                        ).fetchone(), timeout=30, interval=0.2)
    user = db.execute("SELECT user_id FROM creation_requests WHERE id = %s", (request_id,)).fetchone()
    return request_id, str(user["user_id"])


async def sign_in(call, email: str, password: str = PASSWORD):
    return await call("sign_in", "POST", "/api/auth/sign-in", json={"email": email, "password": password},
                      headers={"X-Forwarded-For": "198.51.100.44"})


async def test_the_welcome_link_carries_the_token_in_the_fragment_never_in_the_query(
        call, tokens, deps, consumers, stack, tmp_path, db):
    start_consumer(consumers, stack, tmp_path)
    await created_through_the_queue(call, tokens, db, KEPT)
    link = urlsplit(welcome_link(stack, KEPT["email"]))
    assert link.path == "/set-password" and link.query == ""
    token = parse_qs(link.fragment)["token"][0]
    r = await call("set_password", "POST", "/api/account/password", json={"token": token, "password": PASSWORD})
    assert r.status_code == 204, r.text


async def test_erase_removes_the_person_from_every_table_redis_key_and_event_and_the_account_is_dead(
        call, tokens, deps, consumers, stack, tmp_path, db):
    start_consumer(consumers, stack, tmp_path)
    # The person goes through everything: a queued creation (the consumer process), the welcome email, a
    # password set through its link, a sign-in, failed sign-ins (a Redis counter), a bulk upload that
    # rejects one row with the address and reports another as a duplicate, a second request refused.
    # (The caller chose the address itself as its Idempotency-Key: text it chose, kept with the request.)
    request_id, user_id = await created_through_the_queue(call, tokens, db, ERASED, key=ERASED["email"].lower())
    await created_through_the_queue(call, tokens, db, KEPT)
    token = unquote(parse_qs(urlsplit(welcome_link(stack, ERASED["email"])).fragment)["token"][0])
    assert (await call("set_password", "POST", "/api/account/password",
                       json={"token": token, "password": PASSWORD})).status_code == 204
    signed_in = await sign_in(call, ERASED["email"])
    assert signed_in.status_code == 200, signed_in.text
    assert (await sign_in(call, ERASED["email"], "not-the-password-at-all")).status_code == 401
    counter = sign_in_key(deps, "account", ERASED["email"].lower())
    valid = await call("my_requests", "GET", "/api/users/requests", headers=auth(signed_in.json()["access_token"]))
    assert valid.status_code == 403, valid.text  # a member's valid token: no staff route
    bulk = await upload(call, tokens["sales_manager"], csv_file([
        f"{ERASED['email']},{ERASED['full_name']},{ERASED['phone']},",
        f"{ERASED['email'].upper()},{ERASED['full_name']},call me maybe,",
        f"{KEPT['email']},{KEPT['full_name']},,",
        "new.bulk@example.com,New Bulk,,"]))
    assert bulk.status_code == 202, bulk.text
    # An event an older version wrote about the person, with the address in it (today's events are scrubbed).
    db.execute("INSERT INTO system_health_logs (level, event, message, metadata) VALUES ('INFO', 'legacy', %s, %s)",
               (f"welcome sent to {ERASED['email']}", f'{{"user_id": "{user_id}", "to": "{ERASED["email"]}"}}'))
    client = redis.Redis.from_url(stack.redis_url)
    try:
        assert client.exists(counter) == 1
        before = full_scan(stack, ERASED)
        tables_before = {f.split(":")[0] for f in before}
        # Not vacuous: the person is everywhere the product keeps an address before the erase.
        assert {"table users", "table creation_requests", "table bulk_batches", "table system_health_logs"
                } <= tables_before, before

        viewer = await call("erase_user", "POST", f"/api/admin/users/{user_id}/erase",
                            headers=auth(tokens["viewer"]), json={"reason": "asked to be forgotten"})
        assert viewer.status_code == 403
        short = await call("erase_user", "POST", f"/api/admin/users/{user_id}/erase",
                           headers=auth(tokens["admin"]), json={"reason": "x"})
        assert short.status_code == 422 and short.json()["error"]["code"] == "invalid_input"
        unknown = await call("erase_user", "POST", "/api/admin/users/00000000-0000-4000-8000-000000000000/erase",
                             headers=auth(tokens["admin"]), json={"reason": "asked to be forgotten"})
        assert unknown.status_code == 404
        assert full_scan(stack, ERASED) == before  # refused calls changed nothing

        reason = f"GDPR request from {ERASED['full_name']} ({ERASED['email']}, {ERASED['phone']})"
        r = await call("erase_user", "POST", f"/api/admin/users/{user_id}/erase", headers=auth(tokens["admin"]),
                       json={"reason": reason})
        assert r.status_code == 200, r.text
        assert r.json()["erased"] is True and r.json()["already"] is False

        # Nothing of the person anywhere: every table (the health events and the audit trail included), every
        # Redis key under the prefix; and no address where none may be.
        assert full_scan(stack, ERASED) == []
        assert client.exists(counter) == 0
    finally:
        client.close()
    # The bystander's data stays.
    assert any(f.startswith("table users") for f in full_scan(stack, KEPT))

    # The account is unusable: its token from the sign-in refused, no sign-in, its link dead.
    who = await call("my_requests", "GET", "/api/users/requests", headers=auth(signed_in.json()["access_token"]))
    assert who.status_code == 401, who.text
    assert (await sign_in(call, ERASED["email"])).status_code == 401
    assert (await call("set_password", "POST", "/api/account/password",
                       json={"token": token, "password": "another-long-passphrase-77"})).status_code == 404
    user = db.execute("SELECT email, full_name, phone, password_hash, disabled_at, tokens_valid_after, erased_at"
                      " FROM users WHERE id = %s", (user_id,)).fetchone()
    assert user["email"] == f"erased-{user_id}@erased.invalid" and user["full_name"] == ""
    assert user["phone"] is None and user["password_hash"] is None
    assert None not in (user["disabled_at"], user["tokens_valid_after"], user["erased_at"])
    request = db.execute("SELECT status, user_id, pii_redacted_at FROM creation_requests WHERE id = %s",
                         (request_id,)).fetchone()
    assert request["status"] == "created" and str(request["user_id"]) == user_id  # ids and outcome kept
    # One audit row: the user id and the reason, with the person's own data masked.
    [audit] = db.execute("SELECT actor, target, reason, after FROM audit_log WHERE action = 'user_erased'").fetchall()
    assert audit["actor"] == "admin-1" and audit["target"] == user_id
    assert audit["reason"] == "GDPR request from [erased] ([erased], [erased])"
    # A second erase changes nothing and writes no second audit row.
    again = await call("erase_user", "POST", f"/api/admin/users/{user_id}/erase", headers=auth(tokens["admin"]),
                       json={"reason": "asked again"})
    assert again.status_code == 200 and again.json()["already"] is True
    assert db.execute("SELECT count(*) AS n FROM audit_log WHERE action = 'user_erased'").fetchone()["n"] == 1
    # No new welcome email for it, and one already on its way when the erase committed makes no live link.
    resend = await call("resend_welcome", "POST", f"/api/admin/accounts/{user_id}/welcome",
                        headers=auth(tokens["admin"]))
    assert resend.status_code == 404
    box = db.execute("SELECT id FROM email_outbox WHERE user_id = %s", (user_id,)).fetchone()
    in_flight = EmailClaim(box["id"], user_id, request_id, 0, ERASED["email"], ERASED["full_name"])
    report = await send_claimed(deps.pool, deps.mailer, deps.settings, in_flight, source="test", slot_taken=True)
    assert report.sent == 1  # it went out (it was on its way) ...
    assert db.execute("SELECT count(*) AS n FROM password_setup_tokens WHERE user_id = %s",
                      (user_id,)).fetchone()["n"] == 0  # ... but its link is dead
    # The address is free again: the person may be made anew.
    assert (await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]),
                       json=ERASED)).status_code == 202


OLD = {"email": "old.created@example.com", "full_name": "Olga Oldfield", "phone": "+44 20 7946 0101"}
OLD_FAILED = {"email": "fail-old@example.com", "full_name": "Fabian Failwell", "phone": "+44 20 7946 0202"}
OLD_REJECTED = {"email": "old.rejected@example.com", "full_name": "Rita Rejected", "phone": "+44 20 7946 0303"}
NEW = {"email": "new.created@example.com", "full_name": "Nina Newcome", "phone": "+44 20 7946 0404"}
NEW_REJECTED = {"email": "new.rejected@example.com", "full_name": "Remy Recent", "phone": "+44 20 7946 0505"}


def age(db, days: int, *, requests: list[str], batch: str, users: list[str]) -> None:
    """Make rows look `days` old (their timestamps only)."""
    back = f"{days} days"
    db.execute("UPDATE creation_requests SET created_at = created_at - %s::interval,"
               " updated_at = updated_at - %s::interval WHERE id = ANY(%s)", (back, back, requests))
    db.execute("UPDATE bulk_batches SET created_at = created_at - %s::interval WHERE id = %s", (back, batch))
    db.execute("UPDATE email_outbox SET created_at = created_at - %s::interval, sent_at = sent_at - %s::interval"
               " WHERE user_id = ANY(%s::uuid[])", (back, back, users))


async def test_retention_strips_old_finished_requests_cells_outbox_and_events_and_keeps_newer_ones(
        call, tokens, deps, deps_factory, consumers, stack, tmp_path, db, trap):  # noqa: F811 (the fixture)
    start_consumer(consumers, stack, tmp_path)
    old_id, old_user = await created_through_the_queue(call, tokens, db, OLD)
    enqueuer = await deps_factory(JOB_ATTEMPTS=1)
    failed = await create_user_request(enqueuer, Principal("sales-1", Role.SALES_MANAGER),
                                       CreateUserCommand(**OLD_FAILED), None)
    failed_id = failed.body["request_id"]
    assert (await all_done(db, [failed_id], timeout=30))[failed_id] == "failed"
    old_batch = await upload(call, tokens["sales_manager"], csv_file(
        [f"{OLD_REJECTED['email']},{OLD_REJECTED['full_name']},not a phone,"]))
    assert old_batch.status_code == 202, old_batch.text
    # An event an older version wrote with an address in it (events are scrubbed when written today).
    db.execute("INSERT INTO system_health_logs (created_at, level, event, message, metadata)"
               " VALUES (now() - interval '91 days', 'INFO', 'legacy', %s, %s)",
               (f"legacy note about {OLD_FAILED['email']}", f'{{"email": "{OLD_FAILED["email"]}", "n": 1}}'))
    age(db, 91, requests=[old_id, failed_id], batch=old_batch.json()["batch_id"], users=[old_user])

    new_id, _ = await created_through_the_queue(call, tokens, db, NEW)
    new_batch = await upload(call, tokens["sales_manager"], csv_file(
        [f"{NEW_REJECTED['email']},{NEW_REJECTED['full_name']},not a phone,"]))
    assert new_batch.status_code == 202
    age(db, 89, requests=[new_id], batch=new_batch.json()["batch_id"], users=[])

    # The scheduled cleanup (health events kept a year here, so the event is redacted, not deleted).
    cleaner = await deps_factory(LOG_RETENTION_DAYS=365)
    answer = await run_cleanup(cleaner, actor="scheduler")
    assert answer["pii_redacted"] == {"requests": 2, "batches": 1, "outbox": 1, "events": 1}
    assert answer["pii_retention_days"] == 90 and answer["retention_days"] == 365

    # The expired requests' people: nowhere (the failed one never had an account) ...
    assert full_scan(stack, OLD_FAILED) == []
    assert full_scan(stack, OLD_REJECTED) == []
    # ... the created one's account is the product: its users row only.
    assert {f.split(":")[0] for f in full_scan(stack, OLD)} == {"table users"}
    kept = db.execute("SELECT id, status, error_code, user_id, created_at, email, full_name, phone, search_key"
                      " FROM creation_requests WHERE id = ANY(%s) ORDER BY id", ([old_id, failed_id],)).fetchall()
    assert {r["status"] for r in kept} == {"created", "failed"} and all(r["created_at"] for r in kept)
    assert all((r["email"], r["full_name"], r["phone"], r["search_key"].strip()) == ("", "", None, "") for r in kept)
    # Newer rows keep their data.
    for person in (NEW, NEW_REJECTED):
        assert any(f.startswith(("table creation_requests", "table bulk_batches")) for f in full_scan(stack, person))
    row = db.execute("SELECT email, full_name, phone FROM creation_requests WHERE id = %s", (new_id,)).fetchone()
    assert (row["email"], row["full_name"], row["phone"]) == (NEW["email"], NEW["full_name"], NEW["phone"])

    # A redacted request cannot run again; a second pass redacts nothing.
    retry = await call("retry_request", "POST", f"/api/admin/requests/{failed_id}/retry",
                       headers=auth(tokens["admin"]), json={"reason": "try again"})
    assert retry.status_code == 409, retry.text
    again = await run_cleanup(cleaner, actor="scheduler")
    assert again["pii_redacted"] == {"requests": 0, "batches": 0, "outbox": 0, "events": 0}



def pii_scan_task(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """`invoke pii-scan` as an operator types it, against this run's PostgreSQL and Redis."""
    return subprocess.run([sys.executable, "-m", "invoke", "pii-scan", *args], cwd=ROOT,
                          env={**os.environ, **stack.env()}, capture_output=True, text=True, timeout=120, check=False)


async def test_invoke_pii_scan_prints_each_find_and_exits_1_and_0_when_clean(call, tokens, deps, stack, db):
    r = await call("set_mode", "POST", "/api/admin/system/mode", headers=auth(tokens["admin"]),
                   json={"mode": "sync_direct", "reason": "scan test"})
    assert r.status_code == 200
    made = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]), json=KEPT)
    assert made.status_code == 201, made.text
    await call("sign_in", "POST", "/api/auth/sign-in", json={"email": KEPT["email"], "password": "wrong-password-1"},
               headers={"X-Forwarded-For": "198.51.100.45"})  # a Redis key to scan
    found = pii_scan_task(stack, "--email", KEPT["email"].upper(), "--name", KEPT["full_name"])
    assert found.returncode == 1, found.stdout + found.stderr
    finds = [line for line in found.stdout.splitlines() if line.startswith(("table ", "redis "))]
    assert {line.split(":")[0] for line in finds} == {"table users", "table creation_requests"}
    assert "Traceback" not in found.stderr
    clean = pii_scan_task(stack, "--email", "nobody.here@example.com", "--phone", "+44 20 7946 9999")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    summary = clean.stdout.strip().splitlines()[-1]
    tables = int(re.search(r"scanned (\d+) tables", summary).group(1))  # type: ignore[union-attr]
    keys = int(re.search(r"and (\d+) Redis keys", summary).group(1))  # type: ignore[union-attr]
    assert tables >= 10 and keys >= 1 and summary.endswith("0 find(s)")
    # An address where none may be (a health event written by hand) is a find even when nobody is named.
    db.execute("INSERT INTO system_health_logs (level, event, message) VALUES ('INFO', 'planted', 'mail x@y.org')")
    planted = pii_scan_task(stack)
    assert planted.returncode == 1 and "table system_health_logs (an address outside" in planted.stdout
