"""Hostile input to every route of every function, in process through functions-framework with a valid admin
token: whatever arrives, the answer is a 4xx (or a success) with the contract's JSON error envelope, never a 500.

The named cases are the ones that answered 500 before (nested brackets, a 5,000-digit number, a Unicode digit
in a query value); hypothesis then sends arbitrary bodies, query strings and path segments to every route.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.manifest import load_manifest
from tests.conftest import auth

ROUTES = [(spec.name, route.method, route.path.replace("{request_id}", "req_abc").replace("{file}", "app.js"))
          for spec in load_manifest().values() if spec.kind in ("http", "scheduled") for route in spec.routes]
NESTED = b"[" * (16 * 1024 - 1)
HUGE_PHONE = b'{"email": "a@example.com", "full_name": "A", "phone": ' + b"1" * 5000 + b"}"


def assert_clean(response, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"code", "message", "details"} and error["code"], what


@pytest.mark.parametrize(("name", "method", "path"), ROUTES)
@pytest.mark.parametrize("body", [NESTED, HUGE_PHONE, b"\xff\xfe\xfa{", b'{"email": "\xed\xa0\x80"}',
                                  b'{"a": 1e999999}', b"[" * 2000 + b"]" * 2000, b'"\\ud800"', b"-" * 100],
                         ids=["nested", "huge-number", "invalid-utf8", "surrogate-utf8", "huge-float", "deep-valid",
                              "lone-surrogate-escape", "dashes"])
async def test_hostile_bodies_are_a_4xx(call, tokens, name, method, path, body):
    headers = {**auth(tokens["admin"]), "Content-Type": "application/json"}
    assert_clean(await call(name, method, path, headers=headers, content=body), f"{method} {path}")


@pytest.mark.parametrize(("name", "method", "path"), ROUTES)
@pytest.mark.parametrize("query", ["limit=%C2%B2", "limit=%D9%A3", "limit=9999999999999999999999", "limit=-1",
                                   "limit=", "limit=1&limit=2", "status=%00", "level=%FF", "after_id=1e3",
                                   "before_id=%F0%9F%92%A9", "x=" + "9" * 5000, "%FF%FE=1", "q=%E2%80%AE"])
async def test_odd_query_values_are_a_4xx(call, tokens, name, method, path, query):
    assert_clean(await call(name, method, f"{path}?{query}", headers=auth(tokens["admin"])), f"{path}?{query}")


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


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(route=st.sampled_from(ROUTES), body=st.one_of(
    st.binary(max_size=2048),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                 max_leaves=30).map(lambda v: json.dumps(v).encode())),
       query=st.dictionaries(st.sampled_from(["limit", "status", "level", "after_id", "before_id", "cursor", "q"]),
                             st.text(max_size=30), max_size=3),
       segment=st.text(min_size=1, max_size=40))
async def test_arbitrary_input_to_every_route_is_never_a_500(call, tokens, route, body, query, segment):
    name, method, path = route
    if "req_abc" in path:
        path = path.replace("req_abc", quote(segment, safe=""))
    url = path + ("?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items()) if query else "")
    answer = await call(name, method, url, headers={**auth(tokens["admin"]), "Content-Type": "application/json"},
                        content=body)
    assert_clean(answer, f"{method} {url}")
