"""Load: 2,000 requests at 200/s through real function processes, consumers running, rate limit lifted."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from pathlib import Path

import pytest

from shared.core.auth import Role, issue_token
from shared.creation.models import SetModeCommand, TrafficMode
from shared.creation.traffic import set_mode
from tests.conftest import wait_until
from tests.integration.test_consumer import all_done
from tests.support.functions import FunctionProcess
from tests.support.paced import paced_load
from tests.support.processes import ConsumerProcess

pytestmark = pytest.mark.slow
TOTAL = 2000
RATE = 200
CONNECTIONS = 32


@pytest.fixture
def system(stack, tmp_path: Path):
    env = {**stack.env(), "RATE_LIMIT_MAX": "0"}
    functions = [FunctionProcess("create_user", env, tmp_path, instance=f"create_user-{i}").start() for i in range(2)]
    consumers = [ConsumerProcess(env, tmp_path).start(stack.database_url)]
    yield functions
    for process in functions:
        process.stop()
    for consumer in consumers:
        consumer.stop()


async def run_load(urls: list[str], token: str, flips: list[tuple[float, TrafficMode]], deps) -> dict:
    """The paced load (tests/support/paced.py), with the kill switch flipped at the given offsets."""
    t0 = time.perf_counter()

    async def flipper() -> None:
        for at, mode in flips:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            await set_mode(deps.pool, SetModeCommand(mode=mode, reason="load test flip"), actor="load", source="load")

    prefix = f"load-{uuid.uuid4().hex[:8]}"  # the SES emulator keeps every run's emails: count only this one's
    result, _ = await asyncio.gather(paced_load(urls, token, total=TOTAL, rate=RATE, connections=CONNECTIONS,
                                                prefix=prefix, t0=t0), flipper())
    return result


def emails_per_address(stack, addresses: set[str]) -> collections.Counter[str]:
    """Welcome emails the SES emulator took, per address (read through its own API)."""
    counts: collections.Counter[str] = collections.Counter()
    for message in stack.ses.sent_messages():
        counts.update(to for to in message["to"] if to in addresses)
    return counts


@pytest.mark.parametrize("flip", [False, True], ids=["steady", "kill-switch-flipped-twice"])
async def test_2000_requests_at_200_per_s_none_lost_none_doubled(deps, system, settings, stack, db, figures, flip):
    token = issue_token(settings, role=Role.SALES_MANAGER, subject="load")
    flips = [(3.0, TrafficMode.SYNC_DIRECT), (6.0, TrafficMode.ASYNC_QUEUE)] if flip else []
    result = await run_load([f.url for f in system], token, flips, deps)
    assert result["errors"] == {}, result["errors"]
    assert set(result["codes"]) <= {201, 202}, result["codes"]
    assert result["answered"] == sum(result["codes"].values()) == TOTAL
    if flip:
        assert result["codes"].get(201, 0) > 0 and result["codes"].get(202, 0) > 0
    ids = [r["id"] for r in db.execute("SELECT id FROM creation_requests")]
    drained_from = time.perf_counter()
    final = await all_done(db, ids, timeout=120)
    drained = time.perf_counter() - drained_from
    addresses = result["addresses"]
    rows = db.execute("SELECT email, count(*) AS n FROM users GROUP BY email").fetchall()
    users = collections.Counter({a: 0 for a in addresses})
    users.update({r["email"]: r["n"] for r in rows})
    lost = sum(n == 0 for n in users.values())
    doubled = sum(n - 1 for n in users.values() if n > 1)
    await wait_until(lambda: len(emails_per_address(stack, set(addresses))) == TOTAL, timeout=60, interval=1)
    emails = emails_per_address(stack, set(addresses))
    figures(requests=TOTAL, target_rate=RATE, achieved_rate=result["achieved_rate"], p50_ms=result["p50_ms"],
            p99_ms=result["p99_ms"], answers=str(result["codes"]), recorded=len(ids),
            users=sum(users.values()), lost=lost, duplicated=doubled, emails=sum(emails.values()),
            addresses_without_email=sum(emails[a] == 0 for a in addresses), drain_after_last_answer_s=drained)
    assert len(ids) == TOTAL  # one request recorded per POST
    assert set(final.values()) == {"created"}
    assert lost == 0 and doubled == 0, (lost, doubled)
    assert len(users) == TOTAL and sum(users.values()) == TOTAL  # and no user for an address never sent
    assert all(emails[a] == 1 for a in addresses)  # no crash in this run: exactly one welcome email each
