"""Object-level auth (a sales manager reads only its own requests) and the headers of every API answer."""

from __future__ import annotations

from tests.conftest import auth
from tests.functions.test_create_user import BODY


async def test_a_sales_manager_reads_only_its_own_requests_and_an_admin_reads_all(call, tokens):
    made = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]), json=BODY)
    assert made.status_code == 202
    path = f"/api/users/requests/{made.json()['request_id']}"
    own = await call("request_status", "GET", path, headers=auth(tokens["sales_manager"]))
    assert own.status_code == 200 and own.json()["request_id"] == made.json()["request_id"]
    foreign = await call("request_status", "GET", path, headers=auth(tokens["other_sales"]))
    unknown = await call("request_status", "GET", "/api/users/requests/req_0000", headers=auth(tokens["other_sales"]))
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json() == unknown.json()  # another caller's request looks exactly like a missing one
    admin = await call("request_status", "GET", path, headers=auth(tokens["admin"]))
    assert admin.status_code == 200 and admin.json()["status"] == "queued"


async def test_api_answers_carry_hsts_and_no_store(call, tokens):
    ok = await call("get_mode", "GET", "/api/admin/system/mode", headers=auth(tokens["admin"]))
    refused = await call("get_mode", "GET", "/api/admin/system/mode")
    invalid = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]), json={})
    for answer, status in ((ok, 200), (refused, 401), (invalid, 422)):
        assert answer.status_code == status
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["strict-transport-security"].startswith("max-age=63072000")
