"""Object-level auth (a sales manager reads only its own requests) and the headers of every API answer."""

from __future__ import annotations

import pytest

from tests.conftest import auth
from tests.functions.test_accounts import MEMBER, new_member, set_password, sign_in
from tests.functions.test_create_user import BODY
from tests.support.routes import ROUTES


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


API_ROUTES = [pytest.param(r, id=f"{r.method} {r.path}") for r in ROUTES if r.api]


@pytest.mark.parametrize("route", API_ROUTES)
async def test_api_answers_carry_hsts_and_no_store(call, tokens, route):
    """Every route served through the endpoint wrapper, in each kind of answer it gives: the wrong method (405),
    no token (401, public routes: their own answer), the wrong role (403), and its own role with no body and an
    unknown id (a success, a 404 or a 422)."""
    path = route.path.replace("{" + str(route.param) + "}", "unknown_0000") if route.param else route.path
    other = "POST" if route.method == "GET" else "GET"
    wrong_role = next((role for role in ("viewer", "sales_manager", "admin") if role not in route.roles), None)
    answers = [await call(route.name, other, path, headers=auth(tokens["admin"])),
               await call(route.name, route.method, path)]
    if route.roles != ("anonymous",):
        answers.append(await call(route.name, route.method, path, headers=auth(tokens[route.roles[0]])))
    if wrong_role and route.roles != ("anonymous",):
        answers.append(await call(route.name, route.method, path, headers=auth(tokens[wrong_role])))
    assert answers[0].status_code == 405
    assert route.roles == ("anonymous",) or answers[1].status_code == 401
    if wrong_role and route.roles != ("anonymous",):
        assert answers[-1].status_code == 403
    for answer in answers:
        assert answer.status_code < 500, (route.path, answer.status_code, answer.text[:200])
        assert answer.headers["cache-control"] == "no-store", (route.path, answer.status_code)
        assert answer.headers["strict-transport-security"] == "max-age=63072000; includeSubDomains", (
            route.path, answer.status_code)


async def test_the_successes_that_are_built_by_the_handler_carry_them_too(call, tokens, stack):
    """The handlers that build their own response (a status other than 200, a CSV, no content): the endpoint
    wrapper adds the headers to those as well."""
    sales, admin = auth(tokens["sales_manager"]), auth(tokens["admin"])
    _, link = await new_member(call, tokens, stack)  # sync mode from here: POST /api/users answers 201
    batch = await call("bulk_upload", "POST", "/api/users/bulk", headers={**sales, "Content-Type": "text/csv"},
                       content=b"email,full_name\r\nheaders-batch@example.com,Batch\r\n")
    answers = {
        "create_user 201": await call("create_user", "POST", "/api/users", headers=sales,
                                      json={**BODY, "email": "headers-201@example.com"}),
        "bulk_upload 202": batch,
        "results.csv 200": await call("bulk_status", "GET", f"/api/users/bulk/{batch.json()['batch_id']}/results.csv",
                                      headers=sales),
        "create_account 201": await call("create_account", "POST", "/api/admin/accounts", headers=admin,
                                         json={"email": "staff-h@example.com", "full_name": "S", "role": "viewer"}),
        "bulk_retry 200": await call("bulk_retry", "POST", "/api/admin/requests/retry", headers=admin,
                                     json={"filter": {"status": "failed"}, "reason": "dry run", "dry_run": True}),
        "set_password 204": await set_password(call, link),
        "metrics 200": await call("prometheus_metrics", "GET", "/metrics", headers=admin),
    }
    answers["sign_in 200"] = await sign_in(call, MEMBER["email"])
    for what, answer in answers.items():
        assert str(answer.status_code) == what.rsplit(" ", 1)[1], (what, answer.status_code, answer.text[:200])
        assert answer.headers["cache-control"] == "no-store", what
        assert answer.headers["strict-transport-security"] == "max-age=63072000; includeSubDomains", what
