"""Bearer tokens: 401 for anything but a valid token, 403 for the wrong role."""

from __future__ import annotations

import time

import jwt
import pytest

from tests.conftest import auth
from tests.support.stack import TEST_JWT_SECRET

ADMIN_ROUTES = [("get_mode", "GET", "/api/admin/system/mode"), ("set_mode", "POST", "/api/admin/system/mode"),
                ("system_metrics", "GET", "/api/admin/system/metrics"),
                ("system_logs", "GET", "/api/admin/system/logs"),
                ("cleanup_logs", "POST", "/api/admin/system/cleanup")]
ALL_ROUTES = [*ADMIN_ROUTES, ("create_user", "POST", "/api/users"),
              ("request_status", "GET", "/api/users/requests/req_x")]


def token(secret: str = TEST_JWT_SECRET, algorithm: str = "HS256", **claims) -> str:
    base = {"sub": "u1", "aud": "authenticated", "exp": int(time.time()) + 60,
            "app_metadata": {"role": "admin"}}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, secret, algorithm=algorithm)


def unsigned(**claims) -> str:
    return jwt.encode({"sub": "u1", "aud": "authenticated", "exp": int(time.time()) + 60,
                       "app_metadata": {"role": "admin"}, **claims}, None, algorithm="none")


BAD_TOKENS = {
    "expired": token(exp=int(time.time()) - 10),
    "wrong_aud": token(aud="anon"),
    "no_exp": token(exp=None),
    "wrong_key": token(secret="another-secret-" + "y" * 40),
    "alg_none": unsigned(),
    "garbage": "not.a.jwt",
}


@pytest.mark.parametrize(("name", "method", "path"), ALL_ROUTES)
async def test_no_token_is_401(call, deps, name, method, path):
    r = await call(name, method, path, json={})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_bad_tokens_are_401(call, deps, kind):
    r = await call("get_mode", "GET", "/api/admin/system/mode", headers=auth(BAD_TOKENS[kind]))
    assert r.status_code == 401


async def test_role_only_in_user_metadata_is_403(call, deps):
    t = token(app_metadata={}, user_metadata={"role": "admin"})
    r = await call("get_mode", "GET", "/api/admin/system/mode", headers=auth(t))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize(("name", "method", "path"), ADMIN_ROUTES)
async def test_sales_manager_gets_403_on_admin_routes(call, tokens, name, method, path):
    r = await call(name, method, path, headers=auth(tokens["sales_manager"]),
                   json={"mode": "sync_direct", "reason": "nope"})
    assert r.status_code == 403


async def test_wrong_scheme_is_401(call, deps):
    r = await call("get_mode", "GET", "/api/admin/system/mode", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
