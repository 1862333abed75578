"""Runtime limits obeyed by a running consumer process, without a restart: starts/s and jobs at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from bench.report import max_in_window
from shared.creation.limits import SetLimitsCommand, set_limits
from tests.conftest import wait_until
from tests.integration.test_consumer import (  # noqa: F401  (fixtures)
    all_done,
    start_consumer,
    submit,
    trap,
)

pytestmark = pytest.mark.slow


def max_starts_in_window(starts: list[float]) -> int:
    """The most job starts (epoch seconds) in any 1 s window, by the limiter's own rule."""
    return max_in_window([t * 1000 for t in starts], 1000)
FOLLOW_S = 2.0  # the contract: every consumer obeys within 2 s


async def change(deps, *, rate: int, duration_ms: int = 1000, concurrency: int = 5) -> float:
    await set_limits(deps.pool, deps.settings, SetLimitsCommand(
        rate_limit_max=rate, rate_limit_duration_ms=duration_ms, concurrency=concurrency, reason="test change"),
        actor="admin-1", source="test")
    return time.time()


def starts_of(db, ids: list[str]) -> list[float]:
    return sorted(r["t"] for r in db.execute(
        "SELECT extract(epoch FROM started_at)::float8 AS t FROM creation_attempts WHERE request_id = ANY(%s)",
        (ids,)))


async def test_a_running_consumer_follows_a_new_rate_limit(deps, consumers, stack, tmp_path, db, figures):
    start_consumer(consumers, stack, tmp_path)
    await change(deps, rate=2)
    await asyncio.sleep(FOLLOW_S)
    slow_ids = await submit(deps, [f"slowrate-{i}@example.com" for i in range(8)])
    assert set((await all_done(db, slow_ids, timeout=30)).values()) == {"created"}
    slow = starts_of(db, slow_ids)
    slow_rate = max_starts_in_window(slow)
    assert slow_rate <= 2

    await change(deps, rate=40)
    await asyncio.sleep(FOLLOW_S)
    fast_ids = [i for batch in await asyncio.gather(*(submit(deps, [f"fastrate-{n}-{i}@example.com" for i in range(10)])
                                                      for n in range(3))) for i in batch]
    assert set((await all_done(db, fast_ids, timeout=30)).values()) == {"created"}
    fast = starts_of(db, fast_ids)
    fast_rate = max_starts_in_window(fast)
    assert (slow[-1] - slow[0]) >= 3.0  # 8 starts at 2 per second: 4 windows
    assert slow_rate <= 2 and 10 < fast_rate <= 40  # beyond the configured default of 10/s: the new limit holds
    figures(max_starts_in_1s_at_limit_2=slow_rate, max_starts_in_1s_at_limit_40=fast_rate)


def in_flight(db) -> int:
    return int(db.execute("SELECT count(*) AS n FROM creation_attempts WHERE finished_at IS NULL").fetchone()["n"])


async def watch_in_flight(db, seconds: float) -> int:
    highest, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        highest = max(highest, in_flight(db))
        await asyncio.sleep(0.05)
    return highest


async def test_a_running_consumer_follows_a_new_concurrency(deps, consumers, stack, tmp_path, db, trap,  # noqa: F811
                                                          figures):
    start_consumer(consumers, stack, tmp_path)
    await change(deps, rate=100, concurrency=1)
    await asyncio.sleep(FOLLOW_S)
    ids = await submit(deps, [f"slow-conc-{i}@example.com" for i in range(7)])  # each job takes 2 s (trap)
    await wait_until(lambda: in_flight(db) >= 1, timeout=10)
    at_one = await watch_in_flight(db, 3.0)
    assert at_one == 1
    changed_at = await change(deps, rate=100, concurrency=4)
    # obeyed once the running job ends (<= 2 s) and the consumer has read the change (<= 0.5 s)
    await wait_until(lambda: in_flight(db) >= 4, timeout=FOLLOW_S + 2.5)
    reached_after = time.time() - changed_at
    at_four = await watch_in_flight(db, 1.0)
    assert at_four == 4
    assert set((await all_done(db, ids, timeout=30)).values()) == {"created"}
    figures(max_jobs_at_once_at_concurrency_1=at_one, max_jobs_at_once_at_concurrency_4=at_four,
            seconds_until_4_at_once=reached_after)
