"""An ended session is refused by every instance within 2 s: three real function processes (functions-framework,
as deployed) each keep their copy of the revocations; the change is made through the real admin functions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import auth
from tests.functions.test_account_lifecycle import session, staff_account
from tests.support.functions import FunctionProcess

BOUND_S = 2.0
EMAIL = "ines.instance@example.com"


@pytest.fixture(scope="module")
def instances(stack, tmp_path_factory) -> Iterator[list[FunctionProcess]]:
    log_dir: Path = tmp_path_factory.mktemp("session-instances")
    started = [FunctionProcess("list_accounts", stack.env(), log_dir, instance=f"accounts-{i}") for i in range(3)]
    try:
        for process in started:
            process.start()
        yield started
    finally:
        for process in started:
            process.stop()


async def _status(client: httpx.AsyncClient, instance: FunctionProcess, token: str) -> int:
    r = await client.get(instance.url + "/api/admin/accounts", headers=auth(token))
    return r.status_code


async def _refused_after(client: httpx.AsyncClient, instance: FunctionProcess, token: str, since: float) -> float:
    """Seconds from `since` until this instance answers 401 for `token` (polled every 20 ms; at most 5 s)."""
    while time.perf_counter() - since < 5.0:
        if await _status(client, instance, token) == 401:
            return time.perf_counter() - since
        await asyncio.sleep(0.02)
    return float("inf")


async def _end_and_measure(call, tokens, instances, token: str, action: str, account_id: str) -> list[float]:
    admin = auth(tokens["admin"])
    async with httpx.AsyncClient(timeout=5) as client:
        # Every instance has verified the token and holds its copy of the revocations.
        assert [await _status(client, i, token) for i in instances] == [200, 200, 200]
        if action == "disable":
            r = await call("disable_account", "POST", f"/api/admin/accounts/{account_id}/disable", headers=admin,
                           json={"reason": "measured"})
        elif action == "role":
            r = await call("change_account_role", "PATCH", f"/api/admin/accounts/{account_id}", headers=admin,
                           json={"role": "admin", "reason": "measured"})
        elif action == "revoke":
            r = await call("revoke_sessions", "POST", f"/api/admin/accounts/{account_id}/sessions/revoke",
                           headers=admin, json={"reason": "measured"})
        else:
            r = await call("sign_out", "POST", "/api/auth/sign-out", headers=auth(token))
        assert r.status_code in (200, 204), r.text
        ended = time.perf_counter()
        return list(await asyncio.gather(*(_refused_after(client, i, token, ended) for i in instances)))


@pytest.mark.parametrize("action", ["disable", "role", "revoke", "sign_out"])
async def test_an_ended_session_is_refused_by_every_instance_within_2s(call, tokens, stack, deps, instances, figures,
                                                                      action):
    account_id = await staff_account(call, tokens, stack, EMAIL, "viewer")
    token = await session(call, EMAIL)
    other = await session(call, EMAIL, address="10.3.3.3")
    delays = await _end_and_measure(call, tokens, instances, token, action, account_id)
    figures(action=action, slowest_instance_s=max(delays), fastest_instance_s=min(delays))
    assert max(delays) <= BOUND_S, delays
    async with httpx.AsyncClient(timeout=5) as client:
        # Sign-out ends only that token; the account-wide changes end the other one too.
        expected = 200 if action == "sign_out" else 401
        assert [await _status(client, i, other) for i in instances] == [expected] * 3


async def test_with_the_listeners_down_the_ttl_still_bounds_a_revocation(call, tokens, stack, deps, instances, db,
                                                                        figures):
    account_id = await staff_account(call, tokens, stack, EMAIL, "viewer")
    token = await session(call, EMAIL)
    killed = db.execute("SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity"
                        " WHERE application_name = 'function-sessions-listener'").fetchall()
    assert len(killed) == 3  # one LISTEN connection per instance
    delays = await _end_and_measure(call, tokens, instances, token, "revoke", account_id)
    figures(listeners="terminated", slowest_instance_s=max(delays))
    assert max(delays) <= BOUND_S, delays


async def test_tokens_not_issued_by_our_sign_in_keep_working_everywhere(tokens, deps, instances):
    async with httpx.AsyncClient(timeout=5) as client:
        assert [await _status(client, i, tokens["viewer"]) for i in instances] == [200, 200, 200]
