"""Hostile input to every parser of every function, in process through functions-framework, with each staff role
the route admits (admin, sales_manager, viewer; no token on the public routes) and, in the paths, ids that exist
(a request, a bulk batch, a staff account): whatever arrives, the answer is a 4xx (or a success) with the
contract's JSON error envelope, never a 500.

What reaches a parser, read from the code and the contract rather than assumed: a body only on the routes whose
OpenAPI operation has a requestBody (the functions that call read_json/read_body), in each media type it takes;
query values only for the parameters a route declares (plus a repeated and an unknown one); path segments only
where the path has a parameter. The named cases are the ones that answered 500 before (nested brackets, a
5,000-digit number, a Unicode digit in a query value); hypothesis then sends arbitrary bodies, query strings and
path segments to every route that reads them.

Count (pytest --collect-only): before this rewrite 758 tests, all with the admin token: 36 routes x 8 bodies
(only 9 of those routes read a body) + 36 routes x 13 query strings (6 routes read a query, and most of the 13
named parameters no route has) + 2, with a literal `{batch_id}` or `{account_id}` in the paths. After it: 326,
each reaching a parser or a real resource: 121 body cases (11 bodies x the 11 route-role pairs that read a body;
the bulk upload in both its media types), 110 query cases (11 values x the 10 route-role pairs that read a query,
each declared parameter alone and all together), 10 unknown/repeated-parameter cases, 72 path-segment cases
(6 segments x the 12 route-role pairs with a path parameter), 10 real-id cases (an existing id of another kind is
a 404, the right one is found), 2 named cases and one hypothesis test (80 examples).
The schemathesis run (test_schemathesis.py) went from 36 operations as admin to 53 operation-role pairs.
"""

from __future__ import annotations

import itertools
import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import auth
from tests.support.routes import ROUTES, Route

# A static page's ?token= is read by the page's script in the browser, never by the server.
QUERY_ROUTES = [r for r in ROUTES if r.query and r.roles != ("anonymous",)]


def as_each_role(routes: list[Route]) -> list[pytest.param]:
    return [pytest.param(r, role, id=f"{r.method} {r.path} as {role}") for r in routes for role in r.roles]


NESTED = b"[" * (16 * 1024 - 1)
HUGE_PHONE = b'{"email": "a@example.com", "full_name": "A", "phone": ' + b"1" * 5000 + b"}"
BODIES = {"nested": NESTED, "huge-number": HUGE_PHONE, "invalid-utf8": b"\xff\xfe\xfa{",
          "surrogate-utf8": b'{"email": "\xed\xa0\x80"}', "huge-float": b'{"a": 1e999999}',
          "deep-valid": b"[" * 2000 + b"]" * 2000, "lone-surrogate-escape": b'"\\ud800"', "dashes": b"-" * 100,
          "csv-nul-and-bom": b"\xef\xbb\xbfemail,full_name\r\n\x00@example.com,\x00\r\n",
          "csv-open-quote": b'email,full_name\r\n"a@example.com,A\r\n',
          "nul-in-json-keys": b'[{"a\\u0000": "x", "email": "a\\u0000@example.com", "full_name": "N"}]'}
QUERY_VALUES = {"superscript-2": "%C2%B2", "arabic-3": "%D9%A3", "huge": "9" * 25, "negative": "-1", "empty": "",
                "nul": "%00", "invalid-utf8": "%FF", "exponent": "1e3", "emoji": "%F0%9F%92%A9",
                "rtl-override": "%E2%80%AE", "5000-digits": "9" * 5000}
# (A bare ".." is not here: the HTTP client resolves it before sending, so no route would ever see it.)
SEGMENTS = {"encoded-traversal": "%2e%2e%2fetc%2fpasswd", "nul": "%00", "invalid-utf8": "%FF",
            "long": "r" * 300, "rtl-override": "%E2%80%AE", "sql": "x%27%20OR%201%3D1--"}


_made = itertools.count()


async def real_ids(call, tokens) -> dict[str, str]:
    """A request, a bulk batch (both the sales manager's) and a staff account (a user) that exist (new ones each
    call)."""
    sales, admin = auth(tokens["sales_manager"]), auth(tokens["admin"])
    n = next(_made)
    made = await call("create_user", "POST", "/api/users", headers=sales,
                      json={"email": f"hostile-target-{n}@example.com", "full_name": "Target"})
    batch = await call("bulk_upload", "POST", "/api/users/bulk", headers={**sales, "Content-Type": "text/csv"},
                       content=f"email,full_name\r\nhostile-batch-{n}@example.com,Batch\r\n".encode())
    account = await call("create_account", "POST", "/api/admin/accounts", headers=admin,
                         json={"email": f"hostile-staff-{n}@example.com", "full_name": "Staff", "role": "viewer"})
    assert (made.status_code, batch.status_code, account.status_code) == (202, 202, 201), (made.text, batch.text)
    account_id = account.json()["account"]["id"]
    # A staff account is a user: the erase route's {user_id} is the same id.
    return {"request_id": made.json()["request_id"], "batch_id": batch.json()["batch_id"],
            "account_id": account_id, "user_id": account_id}


# A body the route accepts, so the id is what decides (most id routes take only a reason).
VALID_BODY = {"change_account_role": b'{"role": "viewer", "reason": "hostile kind"}'}


def page_file(route: Route) -> str:
    return "sales.js" if route.name == "sales_desk" else "app.js"


async def filled(route: Route, call, tokens, segment: str | None = None) -> str:
    """The route's path with a real id of its kind (or `segment`, already escaped) in its parameter."""
    if route.param is None:
        return route.path
    if segment is None:
        segment = page_file(route) if route.param == "file" else (await real_ids(call, tokens))[route.param]
    return route.path.replace("{" + route.param + "}", segment)


def headers_of(role: str, tokens, content_type: str | None = None) -> dict[str, str]:
    headers = {} if role == "anonymous" else auth(tokens[role])
    return {**headers, "Content-Type": content_type} if content_type else headers


def assert_clean(response, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"code", "message", "details"} and error["code"], what


@pytest.mark.parametrize(("route", "role"), as_each_role([r for r in ROUTES if r.media_types]))
@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
async def test_hostile_bodies_are_a_4xx(call, tokens, route, role, body):
    path = await filled(route, call, tokens)
    for media_type in route.media_types:
        answer = await call(route.name, route.method, path, headers=headers_of(role, tokens, media_type),
                            content=body)
        assert_clean(answer, f"{route.method} {path} ({media_type})")


@pytest.mark.parametrize(("route", "role"), as_each_role(QUERY_ROUTES))
@pytest.mark.parametrize("value", QUERY_VALUES.values(), ids=QUERY_VALUES.keys())
async def test_odd_query_values_are_a_4xx(call, tokens, route, role, value):
    for name in route.query:  # each declared parameter alone, then all of them at once
        answer = await call(route.name, route.method, f"{route.path}?{name}={value}", headers=headers_of(role, tokens))
        assert_clean(answer, f"{route.path}?{name}={value[:40]}")
    every = "&".join(f"{name}={value}" for name in route.query)
    assert_clean(await call(route.name, route.method, f"{route.path}?{every}", headers=headers_of(role, tokens)),
                 f"{route.path}?{every[:80]}")


@pytest.mark.parametrize(("route", "role"), as_each_role(QUERY_ROUTES))
async def test_unknown_query_parameters_are_a_422_and_repeated_ones_never_a_500(call, tokens, route, role):
    for query in ("%FF%FE=1", "unknown=1"):
        answer = await call(route.name, route.method, f"{route.path}?{query}", headers=headers_of(role, tokens))
        assert answer.status_code == 422, (query, answer.status_code, answer.text[:200])
        assert_clean(answer, f"{route.path}?{query}")
    for name in route.query:  # the request search refuses a repeat; the short lists take the last value
        query = f"{name}=1&{name}=2"
        assert_clean(await call(route.name, route.method, f"{route.path}?{query}", headers=headers_of(role, tokens)),
                     f"{route.path}?{query}")


@pytest.mark.parametrize(("route", "role"), as_each_role([r for r in ROUTES if r.param]))
@pytest.mark.parametrize("segment", SEGMENTS.values(), ids=SEGMENTS.keys())
async def test_hostile_path_segments_are_a_4xx(call, tokens, route, role, segment):
    path = await filled(route, call, tokens, segment)
    answer = await call(route.name, route.method, path, headers=headers_of(role, tokens, "application/json"),
                        content=b'{"reason": "hostile segment"}' if route.media_types else None)
    assert 400 <= answer.status_code < 500, (path, answer.status_code)
    assert_clean(answer, f"{route.method} {path}")


@pytest.mark.parametrize(("route", "role"), as_each_role([r for r in ROUTES if r.param and r.param != "file"]))
async def test_an_id_of_another_kind_is_a_404_and_a_real_one_is_found(call, tokens, route, role):
    """The real ids are what the hostile cases above put in the path: here each is shown to reach its resource,
    and an existing id of another kind to be refused as unknown."""
    ids = await real_ids(call, tokens)
    other = next(value for kind, value in ids.items() if kind != route.param)
    headers = headers_of(role, tokens, "application/json")
    body = VALID_BODY.get(route.name, b'{"reason": "hostile kind"}') if route.media_types else None
    wrong = await call(route.name, route.method, route.path.replace("{" + route.param + "}", other), headers=headers,
                       content=body)
    assert wrong.status_code == 404, (other, wrong.status_code, wrong.text[:200])
    assert_clean(wrong, route.path)
    right = await call(route.name, route.method, route.path.replace("{" + route.param + "}", ids[route.param]),
                       headers=headers, content=body)
    assert right.status_code < 500 and right.status_code != 404, (route.path, right.status_code, right.text[:200])
    assert_clean(right, route.path)


async def test_the_named_cases_of_the_issue_are_422(call, tokens):
    admin = auth(tokens["admin"])
    r = await call("list_requests", "GET", "/api/admin/requests?limit=%C2%B2", headers=admin)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "limit"
    r = await call("create_user", "POST", "/api/users", headers=admin, content=HUGE_PHONE)
    assert r.status_code == 422
    r = await call("create_user", "POST", "/api/users", headers=admin, content=NESTED)
    assert r.status_code == 422
    r = await call("create_user", "POST", "/api/users", headers=admin, content=b"\xff\xfe")
    assert r.status_code == 422


async def test_nul_in_a_json_uploads_keys_and_cells_is_a_refused_row_not_a_500(call, tokens):
    """Found by schemathesis as the sales manager: PostgreSQL holds no NUL in text or jsonb, and the refusals of
    a JSON upload (the key as the field, the email cell for results.csv) are stored with the batch."""
    sales = {**auth(tokens["sales_manager"]), "Content-Type": "application/json"}
    r = await call("bulk_upload", "POST", "/api/users/bulk", headers=sales, content=BODIES["nul-in-json-keys"])
    assert r.status_code == 202, r.text
    [refused] = [row for row in r.json()["rejected"] if row["field"] == "a\ufffd"]
    assert refused["row"] == 1 and refused["message"].startswith("unknown field")
    results = await call("bulk_status", "GET", f"/api/users/bulk/{r.json()['batch_id']}/results.csv", headers=sales)
    assert results.status_code == 200 and "a\ufffd@example.com" in results.text


READERS = [r for r in ROUTES if r.media_types or r.query or r.param]


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(route=st.sampled_from(READERS), data=st.data(), body=st.one_of(
    st.binary(max_size=2048),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                 max_leaves=30).map(lambda v: json.dumps(v).encode())),
       segment=st.one_of(st.none(), st.text(min_size=1, max_size=40)))
async def test_arbitrary_input_to_every_route_is_never_a_500(call, tokens, route, data, body, segment):
    role = data.draw(st.sampled_from(route.roles), label="role")
    query = data.draw(st.dictionaries(st.sampled_from([*route.query, "x"]), st.text(max_size=30), max_size=3)
                      if route.query else st.just({}), label="query")
    media_type = data.draw(st.sampled_from(route.media_types), label="media type") if route.media_types else None
    path = await filled(route, call, tokens, None if segment is None else quote(segment, safe=""))
    url = path + ("?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items()) if query else "")
    answer = await call(route.name, route.method, url, headers=headers_of(role, tokens, media_type),
                        content=body if media_type else None)
    assert_clean(answer, f"{route.method} {url} as {role}")
