"""Failed requests for the admin, and the retry action."""

from __future__ import annotations

from tests.conftest import auth


def fail_request(db, email: str) -> str:
    db.execute("INSERT INTO creation_requests (id, actor, body_hash, email, email_normalized, full_name, mode, status,"
               " attempts, error_code, error) VALUES (%s, 'sales-1', 'h', %s, %s, 'Failed Person', 'async_queue',"
               " 'failed', 4, 'creation_error', 'attempt 4 of 4 failed: RaiseException')",
               (f"req_{email.split('@')[0]}", email, email.lower()))
    return f"req_{email.split('@')[0]}"


async def test_failed_requests_are_listed_for_admins_only(call, tokens, db):
    request_id = fail_request(db, "broken@example.com")
    r = await call("list_requests", "GET", "/api/admin/requests?status=failed", headers=auth(tokens["admin"]))
    assert r.status_code == 200
    [item] = r.json()["items"]
    assert item["request_id"] == request_id and item["error"].endswith("RaiseException")
    assert item["email"] == "broken@example.com" and item["attempts"] == 4
    denied = await call("list_requests", "GET", "/api/admin/requests", headers=auth(tokens["sales_manager"]))
    assert denied.status_code == 403
    bad = await call("list_requests", "GET", "/api/admin/requests?status=weird", headers=auth(tokens["admin"]))
    assert bad.status_code == 422


async def test_retry_requeues_a_failed_request_through_the_normal_path(call, tokens, db, deps):
    request_id = fail_request(db, "again@example.com")
    r = await call("retry_request", "POST", f"/api/admin/requests/{request_id}/retry", headers=auth(tokens["admin"]),
                   json={"reason": "SES was down"})
    assert r.status_code == 200, r.text
    assert r.json() == {"request_id": request_id, "status": "queued", "mode": "async_queue"}
    job = await deps.queue.queue.getJob(request_id)
    assert job is not None and job.data == {"request_id": request_id}
    row = db.execute("SELECT status, error FROM creation_requests WHERE id = %s", (request_id,)).fetchone()
    assert row == {"status": "queued", "error": None}
    event = db.execute("SELECT metadata FROM system_health_logs WHERE event = 'request_retried'").fetchone()
    assert event["metadata"] == {"request_id": request_id, "by": "admin-1", "reason": "SES was down"}
    twice = await call("retry_request", "POST", f"/api/admin/requests/{request_id}/retry",
                       headers=auth(tokens["admin"]), json={"reason": "again"})
    assert twice.status_code == 409


async def test_retry_in_sync_mode_creates_the_user_at_once(call, tokens, db):
    request_id = fail_request(db, "now@example.com")
    await call("set_mode", "POST", "/api/admin/system/mode", headers=auth(tokens["admin"]),
               json={"mode": "sync_direct", "reason": "queue off"})
    r = await call("retry_request", "POST", f"/api/admin/requests/{request_id}/retry", headers=auth(tokens["admin"]),
                   json={"reason": "try now"})
    assert r.json()["status"] == "created"
    assert db.execute("SELECT count(*) AS n FROM users WHERE email = 'now@example.com'").fetchone()["n"] == 1


async def test_retry_of_unknown_request_is_404_and_reason_is_required(call, tokens):
    r = await call("retry_request", "POST", "/api/admin/requests/req_none/retry", headers=auth(tokens["admin"]),
                   json={"reason": "why not"})
    assert r.status_code == 404
    r = await call("retry_request", "POST", "/api/admin/requests/req_none/retry", headers=auth(tokens["admin"]),
                   json={})
    assert r.status_code == 422
