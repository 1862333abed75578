"""Load: 2,000 requests at 200/s through real function processes, consumers running, rate limit lifted."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import httpx
import pytest

from shared.auth import Role, issue_token
from shared.models import SetModeCommand, TrafficMode
from shared.traffic import set_mode
from tests.integration.test_consumer import all_done
from tests.support.functions import FunctionProcess
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
    """Request i is sent at t0 + i/RATE by one of CONNECTIONS senders (a fleet of frontends with keep-alive).

    A bounded set of senders, not 2,000 coroutines waiting in the HTTP client's pool: such a pool wait is itself
    quadratic and would measure the client, not the system. A slow system shows as a lower achieved rate.
    """
    latencies: list[float] = []
    codes: dict[int, int] = {}
    next_index = iter(range(TOTAL))
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        started = time.perf_counter()

        async def sender() -> None:
            for i in next_index:
                await asyncio.sleep(max(0.0, started + i / RATE - time.perf_counter()))
                t = time.perf_counter()
                r = await http.post(urls[i % len(urls)] + "/api/users", headers={"Authorization": f"Bearer {token}"},
                                    json={"email": f"load-{i}@example.com", "full_name": f"Load {i}"})
                latencies.append(time.perf_counter() - t)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

        async def flipper() -> None:
            for at, mode in flips:
                await asyncio.sleep(max(0.0, started + at - time.perf_counter()))
                await set_mode(deps.pool, SetModeCommand(mode=mode, reason="load test flip"), actor="load",
                               source="load")

        await asyncio.gather(*(sender() for _ in range(CONNECTIONS)), flipper())
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {"codes": codes, "elapsed_s": elapsed, "rate": TOTAL / elapsed,
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * latencies[int(0.99 * len(latencies))]}


@pytest.mark.parametrize("flip", [False, True], ids=["steady", "kill-switch-flipped-twice"])
async def test_2000_requests_at_200_per_s_none_lost_none_doubled(deps, system, settings, db, figures, flip):
    token = issue_token(settings, role=Role.SALES_MANAGER, subject="load")
    flips = [(3.0, TrafficMode.SYNC_DIRECT), (6.0, TrafficMode.ASYNC_QUEUE)] if flip else []
    result = await run_load([f.url for f in system], token, flips, deps)
    assert set(result["codes"]) <= {201, 202}, result["codes"]
    assert sum(result["codes"].values()) == TOTAL
    if flip:
        assert result["codes"].get(201, 0) > 0 and result["codes"].get(202, 0) > 0
    ids = [r["id"] for r in db.execute("SELECT id FROM creation_requests")]
    assert len(ids) == TOTAL
    drained_from = time.perf_counter()
    final = await all_done(db, ids, timeout=120)
    drained = time.perf_counter() - drained_from
    assert set(final.values()) == {"created"}
    users = db.execute("SELECT count(*) AS n, count(DISTINCT email_normalized) AS d FROM users").fetchone()
    assert users == {"n": TOTAL, "d": TOTAL}
    figures(requests=TOTAL, achieved_rate=result["rate"], p50_ms=result["p50_ms"], p99_ms=result["p99_ms"],
            answers=str(result["codes"]), lost=0, duplicated=0, drain_after_last_answer_s=drained)
