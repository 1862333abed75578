"""A scheduler token naming an unknown key (`kid`) never holds the event loop, and a flood of them costs one JWKS
fetch: the fetch runs in a thread, and a kid not found is answered from memory for a while (issue 21)."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from shared.core import oidc_keys
from tests.conftest import auth, use_deps
from tests.support.jwks import slow_jwks

SCHEDULER = "provisioner-scheduler@proj.iam.gserviceaccount.com"
AUDIENCE = "https://prod-cleanup-logs-123.europe-west1.run.app"
DELAY_S = 1.5  # the certificate URL's answer time


def token(key: object, kid: str) -> str:
    now = int(time.time())
    return jwt.encode({"iss": "https://accounts.google.com", "aud": AUDIENCE, "email": SCHEDULER,
                       "email_verified": True, "sub": "1", "iat": now, "exp": now + 300}, key,  # type: ignore[arg-type]
                      algorithm="RS256", headers={"kid": kid})


async def test_unknown_kids_fetch_the_keys_once_in_a_thread_and_the_loop_keeps_serving(
        call, deps, deps_factory, monkeypatch) -> None:
    with slow_jwks("k1", DELAY_S) as jwks:
        use_deps(monkeypatch, await deps_factory(SCHEDULER_SERVICE_ACCOUNT=SCHEDULER, OIDC_JWKS_URL=jwks.url,
                                                 OIDC_AUDIENCE=AUDIENCE))
        gaps: list[float] = []
        stop = asyncio.Event()

        async def heartbeat() -> None:  # what every other request on this instance would feel
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                gaps.append(time.monotonic() - last)
                last = time.monotonic()

        beat = asyncio.create_task(heartbeat())
        flood = await asyncio.gather(*(call("cleanup_logs", "POST", "/api/admin/system/cleanup",
                                            headers=auth(token(jwks.key, f"made-up-{n}"))) for n in range(20)))
        stop.set()
        await beat
        assert {r.status_code for r in flood} == {401}
        assert max(gaps) < DELAY_S / 3, f"the event loop stalled {max(gaps):.2f} s"  # the bound is the feature
        assert jwks.hits == 1  # one fetch for the whole flood; the kids it did not hold are answered from memory
        again = await call("cleanup_logs", "POST", "/api/admin/system/cleanup",
                           headers=auth(token(jwks.key, "made-up-again")))
        assert again.status_code == 401 and jwks.hits == 1  # the negative answer is cached
        ok = await call("cleanup_logs", "POST", "/api/admin/system/cleanup", headers=auth(token(jwks.key, "k1")))
        assert ok.status_code == 200 and jwks.hits == 1  # the real key came with that one fetch


def test_a_kid_not_found_is_fetched_again_only_after_the_negative_answer_expires(monkeypatch) -> None:
    with slow_jwks("k1", 0.0) as jwks:
        made_up = token(jwks.key, "rotated-later")
        for _ in range(3):
            with pytest.raises(jwt.InvalidKeyError):
                oidc_keys.signing_key(jwks.url, made_up)
        assert jwks.hits == 1
        monkeypatch.setattr(oidc_keys, "REFETCH_AFTER_S", 0.0)
        with pytest.raises(jwt.InvalidKeyError):
            oidc_keys.signing_key(jwks.url, made_up)
        assert jwks.hits == 2
