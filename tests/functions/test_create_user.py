"""POST /api/users through the real function, real PostgreSQL, real Redis, SES emulator."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tests.conftest import auth

BODY = {"email": "Alice.Example@Example.com", "full_name": "Alice Example", "phone": "+1 555 0100",
        "product": "pro"}


def body(**changes: Any) -> dict[str, Any]:
    return {**BODY, **changes}


async def set_mode(call, tokens, mode: str) -> None:
    r = await call("set_mode", "POST", "/api/admin/system/mode", headers=auth(tokens["admin"]),
                   json={"mode": mode, "reason": "test switch"})
    assert r.status_code == 200, r.text


async def test_queue_mode_answers_202_records_request_and_enqueues_ids_only(call, tokens, db, deps):
    r = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]), json=BODY)
    assert r.status_code == 202, r.text
    data = r.json()
    assert data["status"] == "queued" and data["mode"] == "async_queue"
    assert r.headers["location"] == data["status_url"] == f"/api/users/requests/{data['request_id']}"
    row = db.execute("SELECT status, mode, email_normalized FROM creation_requests WHERE id = %s",
                     (data["request_id"],)).fetchone()
    assert row == {"status": "queued", "mode": "async_queue", "email_normalized": "alice.example@example.com"}
    job = await deps.queue.queue.getJob(data["request_id"])
    assert job is not None and job.id == data["request_id"]
    # ids only: the request id and the W3C trace context recorded with the request (not a secret, no PII)
    traceparent = db.execute("SELECT traceparent FROM creation_requests WHERE id = %s",
                             (data["request_id"],)).fetchone()["traceparent"]
    assert job.data == {"request_id": data["request_id"], "traceparent": traceparent or ""}
    assert job.opts["attempts"] == 4 and job.opts["backoff"] == {"type": "exponential", "delay": 2000}
    assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 0
    event = db.execute("SELECT level, event FROM system_health_logs WHERE event = 'creation_requested'").fetchone()
    assert event == {"level": "INFO", "event": "creation_requested"}


async def test_sync_mode_creates_user_and_sends_welcome_email_without_password(call, tokens, db, stack):
    await set_mode(call, tokens, "sync_direct")
    before = len(stack.ses.sent_messages())
    r = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]), json=BODY)
    assert r.status_code == 201, r.text
    data = r.json()
    assert data["status"] == "created" and data["mode"] == "sync_direct" and data["fallback"] is False
    assert data["user"]["email"] == "Alice.Example@example.com" and data["user"]["full_name"] == "Alice Example"
    user = db.execute("SELECT * FROM users").fetchone()
    assert str(user["id"]) == data["user"]["id"]
    sent = stack.ses.sent_messages()[before:]
    assert len(sent) == 1 and sent[0]["to"] == ["Alice.Example@example.com"]
    text = sent[0]["body"]
    token = text.split("token=", 1)[1].split()[0]
    link = text.rstrip("\n").rsplit("\n", 1)[1]
    # The link carries the one-time token, nothing else, and in the fragment: never sent to a server, so never in
    # a request log.
    assert urlsplit(link).query == "" and list(parse_qs(urlsplit(link).fragment)) == ["token"]
    # Word for word: the greeting, the one link, nothing more (so no password, whatever its shape).
    assert text == ("Hello Alice Example,\n\nAn account was created for you. Choose your password here"
                    f" (the link works once and expires):\n\n{link}\n")
    stored = db.execute("SELECT token_hash FROM password_setup_tokens WHERE user_id = %s", (user["id"],)).fetchall()
    assert len(stored) == 1 and token not in stored[0]["token_hash"]
    assert stored[0]["token_hash"] == hashlib.sha256(unquote(token).encode()).hexdigest()
    outbox = db.execute("SELECT status FROM email_outbox").fetchone()
    assert outbox["status"] == "sent"


async def test_request_status_follows_the_request(call, tokens):
    await set_mode(call, tokens, "sync_direct")
    created = (await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]),
                          json=BODY)).json()
    r = await call("request_status", "GET", f"/api/users/requests/{created['request_id']}",
                   headers=auth(tokens["sales_manager"]))
    assert r.status_code == 200
    status = r.json()
    assert status["status"] == "created" and status["user_id"] == created["user"]["id"]
    assert status["attempts"] == 1 and status["mode"] == "sync_direct"
    missing = await call("request_status", "GET", "/api/users/requests/req_nope", headers=auth(tokens["admin"]))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("mode", ["sync_direct", "async_queue"])
async def test_existing_email_ignoring_case_and_width_is_409(call, tokens, db, mode):
    await set_mode(call, tokens, "sync_direct")
    assert (await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]),
                       json=BODY)).status_code == 201
    await set_mode(call, tokens, mode)
    twin = body(email="ＡＬＩＣＥ.example@EXAMPLE.com")
    r = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]), json=twin)
    assert r.status_code == 409 and r.json()["error"]["code"] == "user_exists"
    assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 1
    assert db.execute("SELECT count(*) AS n FROM creation_requests").fetchone()["n"] == 1


async def test_second_request_for_a_pending_address_is_409(call, tokens):
    first = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]), json=BODY)
    assert first.status_code == 202
    again = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]), json=BODY)
    assert again.status_code == 409 and again.json()["error"]["code"] == "request_in_progress"


@pytest.mark.parametrize("mode", ["async_queue", "sync_direct"])
async def test_idempotency_key_replays_the_first_answer(call, tokens, db, mode):
    await set_mode(call, tokens, mode)
    headers = {**auth(tokens["sales_manager"]), "Idempotency-Key": "key-123"}
    first = await call("create_user", "POST", "/api/users", headers=headers, json=BODY)
    second = await call("create_user", "POST", "/api/users", headers=headers, json=BODY)
    assert first.status_code == second.status_code == (202 if mode == "async_queue" else 201)
    assert first.json() == second.json()
    assert db.execute("SELECT count(*) AS n FROM creation_requests").fetchone()["n"] == 1
    reused = await call("create_user", "POST", "/api/users", headers=headers, json=body(full_name="Other"))
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"


@pytest.mark.parametrize("mode", ["async_queue", "sync_direct"])
async def test_concurrent_identical_requests_make_one_request_and_one_user(call, tokens, db, stack, mode):
    await set_mode(call, tokens, mode)
    before = len(stack.ses.sent_messages())
    headers = {**auth(tokens["sales_manager"]), "Idempotency-Key": "same-key"}
    answers = await asyncio.gather(*[call("create_user", "POST", "/api/users", headers=headers, json=BODY)
                                     for _ in range(12)])
    assert {a.status_code for a in answers} == {202 if mode == "async_queue" else 201}
    assert len({a.json()["request_id"] for a in answers}) == 1
    assert db.execute("SELECT count(*) AS n FROM creation_requests").fetchone()["n"] == 1
    users = db.execute("SELECT count(*) AS n FROM users").fetchone()["n"]
    assert users == (1 if mode == "sync_direct" else 0)
    assert len(stack.ses.sent_messages()) - before == users


async def test_idempotency_keys_are_scoped_per_caller(call, tokens):
    h1 = {**auth(tokens["sales_manager"]), "Idempotency-Key": "shared-key"}
    h2 = {**auth(tokens["other_sales"]), "Idempotency-Key": "shared-key"}
    a = await call("create_user", "POST", "/api/users", headers=h1, json=BODY)
    b = await call("create_user", "POST", "/api/users", headers=h2, json=body(email="bob@example.com"))
    assert a.status_code == b.status_code == 202
    assert a.json()["request_id"] != b.json()["request_id"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"full_name": "No Email"}, "email"),
        (body(email="not-an-address"), "email"),
        (body(email="a" * 65 + "@example.com"), "email"),
        (body(full_name=""), "full_name"),
        (body(full_name="Evil\r\nBcc: x@example.com"), "full_name"),
        (body(phone="call me"), "phone"),
        (body(role="admin"), "role"),
        ([BODY], "body"),
    ],
)
async def test_bad_input_is_422_with_fields_and_writes_nothing(call, tokens, db, payload, field):
    r = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]), json=payload)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_input"
    assert field in {d["field"] for d in error["details"]}
    assert db.execute("SELECT count(*) AS n FROM creation_requests").fetchone()["n"] == 0
    assert db.execute("SELECT count(*) AS n FROM system_health_logs").fetchone()["n"] == 0


async def test_not_json_is_422_and_oversized_body_is_413(call, tokens):
    headers = {**auth(tokens["sales_manager"]), "Content-Type": "application/json"}
    r = await call("create_user", "POST", "/api/users", headers=headers, content=b"{nope")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    big = body(full_name="x" * (17 * 1024))
    r = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]), json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


async def test_bad_idempotency_key_is_422(call, tokens):
    headers = {**auth(tokens["sales_manager"]), "Idempotency-Key": "k" * 256}
    r = await call("create_user", "POST", "/api/users", headers=headers, json=BODY)
    assert r.status_code == 422


async def test_sql_metacharacters_are_stored_verbatim(call, tokens, db):
    await set_mode(call, tokens, "sync_direct")
    name = "Robert'); DROP TABLE users;-- %s {}"
    r = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]),
                   json=body(full_name=name))
    assert r.status_code == 201
    assert db.execute("SELECT full_name FROM users").fetchone()["full_name"] == name


async def test_get_is_405_json(call, tokens):
    r = await call("create_user", "GET", "/api/users", headers=auth(tokens["sales_manager"]))
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
