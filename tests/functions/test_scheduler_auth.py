"""The scheduled trigger in production: Cloud Scheduler's Google-signed OIDC token may run the cleanup only."""

from __future__ import annotations

import time
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import auth, use_deps
from tests.support.jwks import local_jwks

SCHEDULER = "provisioner-scheduler@proj.iam.gserviceaccount.com"
AUDIENCE = "https://cleanup.example"


@pytest.fixture(scope="module")
def google_keys() -> Iterator[tuple[object, str]]:
    """An RSA key and a local JWKS endpoint standing in for Google's certificate URL."""
    with local_jwks("k1") as served:
        yield served


def oidc(key: object, **claims: object) -> str:
    base = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "email": SCHEDULER,
            "email_verified": True, "sub": "1234", "iat": int(time.time()), "exp": int(time.time()) + 300}
    base.update(claims)
    base = {k: v for k, v in base.items() if v is not None}  # a claim given as None is left out
    return jwt.encode(base, key, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture
async def scheduled(deps, deps_factory, google_keys, monkeypatch):
    key, url = google_keys
    instance = await deps_factory(SCHEDULER_SERVICE_ACCOUNT=SCHEDULER, OIDC_JWKS_URL=url, OIDC_AUDIENCE=AUDIENCE)
    use_deps(monkeypatch, instance)
    yield key


async def test_scheduler_oidc_token_runs_the_cleanup(call, scheduled):
    r = await call("cleanup_logs", "POST", "/api/admin/system/cleanup", headers=auth(oidc(scheduled)))
    assert r.status_code == 200 and r.json()["retention_days"] == 7


@pytest.mark.parametrize(("claims", "status"), [
    ({"email": "someone-else@proj.iam.gserviceaccount.com"}, 403),
    ({"email_verified": False}, 403),
    ({"iss": "https://evil.example"}, 401),
    ({"exp": int(time.time()) - 60}, 401),
    ({"aud": "https://another-function.example"}, 401),
    ({"aud": None}, 401),
])
async def test_other_oidc_tokens_are_refused(call, scheduled, claims, status):
    r = await call("cleanup_logs", "POST", "/api/admin/system/cleanup", headers=auth(oidc(scheduled, **claims)))
    assert r.status_code == status


async def test_no_configured_audience_accepts_no_scheduler_token(monkeypatch, call, deps, deps_factory, google_keys):
    key, url = google_keys
    use_deps(monkeypatch, await deps_factory(SCHEDULER_SERVICE_ACCOUNT=SCHEDULER, OIDC_JWKS_URL=url))
    r = await call("cleanup_logs", "POST", "/api/admin/system/cleanup", headers=auth(oidc(key)))
    assert r.status_code == 401


async def test_a_token_signed_by_another_key_is_refused(call, scheduled):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    r = await call("cleanup_logs", "POST", "/api/admin/system/cleanup", headers=auth(oidc(stranger)))
    assert r.status_code == 401


async def test_the_scheduler_may_not_use_admin_routes(call, scheduled):
    r = await call("get_mode", "GET", "/api/admin/system/mode", headers=auth(oidc(scheduled)))
    assert r.status_code == 403
    r = await call("create_user", "POST", "/api/users", headers=auth(oidc(scheduled)),
                   json={"email": "x@example.com", "full_name": "X"})
    assert r.status_code == 403


async def test_a_user_token_cannot_claim_the_scheduler_role(call, settings, deps):
    from shared.core.auth import Role, issue_token

    forged = issue_token(settings, role=Role.ADMIN, subject="u", extra={"app_metadata": {"role": "scheduler"}})
    r = await call("cleanup_logs", "POST", "/api/admin/system/cleanup", headers=auth(forged))
    assert r.status_code == 403
