"""Bulk retry: by ids or filter, dry run numbers, only failed ones, never a second user or email."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import auth
from tests.functions.test_cockpit import counts, insert_request

URL = "/api/admin/requests/retry"


def give_user(db, email: str, *, email_sent: bool) -> None:
    user_id = uuid.uuid4()
    db.execute("INSERT INTO users (id, email, email_normalized, full_name, request_id) VALUES (%s, %s, %s, 'U', 'r')",
               (user_id, email, email.lower()))
    db.execute("INSERT INTO email_outbox (user_id, request_id, status, sent_at) VALUES (%s, 'r', %s, now())",
               (user_id, "sent" if email_sent else "pending"))


@pytest.fixture
def mix(db):
    """4 failed (one of them already has a user who got the email, two for the same address), 1 created."""
    insert_request(db, "req_f1", "f1@example.com", "Fiona One")
    insert_request(db, "req_f2", "f2@example.com", "Fiona Two")
    insert_request(db, "req_f3a", "f3@example.com", "Fiona Three")
    insert_request(db, "req_f3b", "f3@example.com", "Fiona Three")
    insert_request(db, "req_done", "fdone@example.com", "Fiona Done")
    give_user(db, "fdone@example.com", email_sent=True)
    insert_request(db, "req_ok", "fok@example.com", "Fiona Ok", status="created")


async def test_dry_run_counts_and_changes_nothing(call, tokens, db, mix):
    before = counts(db)
    r = await call("bulk_retry", "POST", URL, headers=auth(tokens["admin"]),
                   json={"filter": {"q": "fiona"}, "reason": "SES is back", "dry_run": True})
    assert r.status_code == 200, r.text
    assert r.json() == {"matched": 6, "would_retry": 3, "already_created": 1, "emails_already_sent": 1}
    assert counts(db) == before
    assert db.execute("SELECT count(*) AS n FROM creation_requests WHERE status = 'failed'").fetchone()["n"] == 5


async def test_real_run_retries_only_what_the_dry_run_said_through_the_queue(call, tokens, db, deps, mix):
    admin = auth(tokens["admin"])
    dry = await call("bulk_retry", "POST", URL, headers=admin,
                     json={"filter": {"q": "FIONA", "status": "failed"}, "reason": "SES is back", "dry_run": True})
    r = await call("bulk_retry", "POST", URL, headers=admin,
                   json={"filter": {"q": "FIONA", "status": "failed"}, "reason": "SES is back"})
    assert r.status_code == 202, r.text
    assert r.json()["retried"] == dry.json()["would_retry"] == 3 and r.json()["skipped"] == 2
    queued = {row["id"] for row in db.execute("SELECT id FROM creation_requests WHERE status = 'queued'")}
    assert queued == {"req_f1", "req_f2", "req_f3b"}  # the newest of the two for f3; never the one with a user
    for request_id in queued:
        job = await deps.queue.queue.getJob(request_id)
        assert job is not None and job.data == {"request_id": request_id}
    [audit] = db.execute("SELECT actor, action, reason, before, after FROM audit_log").fetchall()
    assert audit["action"] == "bulk_retry" and audit["reason"] == "SES is back" and audit["after"]["retried"] == 3
    event = db.execute("SELECT level, metadata FROM system_health_logs WHERE event = 'bulk_retry_started'").fetchone()
    assert event["level"] == "WARNING" and event["metadata"]["retried"] == 3
    story = (await call("request_story", "GET", "/api/admin/requests/req_f1", headers=admin)).json()
    assert [s["detail"] for s in story["timeline"] if s["kind"] == "retried"] == [
        {"by": "admin-1", "reason": "SES is back", "bulk": True}]
    again = await call("bulk_retry", "POST", URL, headers=admin,
                       json={"filter": {"q": "fiona", "status": "failed"}, "reason": "twice"})
    assert again.status_code == 200 and again.json() == {"retried": 0, "skipped": 2}


async def test_with_the_queue_off_each_is_created_once_paced(call, tokens, db, mix):
    admin = auth(tokens["admin"])
    await call("set_mode", "POST", "/api/admin/system/mode", headers=admin,
               json={"mode": "sync_direct", "reason": "off"})
    r = await call("bulk_retry", "POST", URL, headers=admin,
                   json={"request_ids": ["req_f1", "req_f2", "req_done", "req_ok", "req_missing"], "reason": "now"})
    assert r.status_code == 202, r.text
    assert r.json()["retried"] == 2 and r.json()["skipped"] == 2 and r.json()["path"] == "sync"
    rows = db.execute("SELECT email, count(*) AS n FROM users GROUP BY email ORDER BY email").fetchall()
    assert [(row["email"], row["n"]) for row in rows] == [("f1@example.com", 1), ("f2@example.com", 1),
                                                          ("fdone@example.com", 1)]
    assert db.execute("SELECT count(*) AS n FROM email_outbox").fetchone()["n"] == 3


async def test_zero_matches_is_a_200_no_op(call, tokens, db):
    r = await call("bulk_retry", "POST", URL, headers=auth(tokens["admin"]),
                   json={"filter": {"q": "nobody"}, "reason": "try"})
    assert r.status_code == 200 and r.json() == {"retried": 0, "skipped": 0}
    assert counts(db) == (0, 0)


async def test_more_than_10000_matches_needs_a_narrower_filter(call, tokens, db):
    db.execute("INSERT INTO creation_requests (id, actor, body_hash, email, email_normalized, full_name, mode, status)"
               " SELECT 'req_m' || g, 's', 'h', 'm' || g || '@example.com', 'm' || g || '@example.com', 'M',"
               " 'async_queue', 'failed' FROM generate_series(1, 10001) AS g")
    for body in ({"filter": {"status": "failed"}}, {"request_ids": [f"req_m{i}" for i in range(1, 10_002)]}):
        r = await call("bulk_retry", "POST", URL, headers=auth(tokens["admin"]), json={**body, "reason": "too many"})
        assert r.status_code == 422, r.text
        assert "narrow" in r.json()["error"]["message"]
    assert db.execute("SELECT count(*) AS n FROM creation_requests WHERE status = 'failed'").fetchone()["n"] == 10_001


@pytest.mark.parametrize("body", [{"filter": {"status": "failed"}}, {"filter": {}, "reason": "x" * 501},
                                  {"reason": "neither"}, {"request_ids": ["a"], "filter": {}, "reason": "both"},
                                  {"filter": {"colour": "red"}, "reason": "unknown field"},
                                  {"filter": {"from": "yesterday"}, "reason": "bad time"},
                                  {"filter": {"status": "failed"}, "reason": "fine", "dry_run": "yes"},
                                  {"request_ids": ["a\x00b"], "reason": "nul"},
                                  {"filter": {"q": "\x00"}, "reason": "nul"},
                                  {"filter": {"status": "failed", "to": 5}, "reason": "not a time"},
                                  {"filter": {"actor": None}, "reason": "null actor"},
                                  {"filter": None, "request_ids": ["req_f1"], "reason": "null filter"}])
async def test_bad_bulk_retry_is_422(call, tokens, db, body):
    r = await call("bulk_retry", "POST", URL, headers=auth(tokens["admin"]), json=body)
    assert r.status_code == 422, r.text
    assert counts(db) == (0, 0)
