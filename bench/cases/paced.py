"""The load test's shape as a bench case: a paced open-loop load against the whole create path, consumer running.

The achieved rate is the figure, the target rate is the limit: a system that cannot keep up answers later, so
the load takes longer than `total / rate` and the ratio falls. Nothing may be lost or doubled on the way.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

from bench.context import Ctx, load_average
from bench.loadgen import children_cpu_s
from bench.procs import ConsumerProc
from bench.report import all_met, at_least, case_result, fmt, ratio

RATE = 200.0
CONNECTIONS = 32
# Paced creations sent first (quick and full alike), checked for lost and doubled users, reported, but not in the
# rate nor in the goal: two create processes and a consumer that just started pay their one-time costs in their
# first second, which a 3 s quick load cannot amortise (bench/README.md, "Warm-up").
WARM_UP = 400


async def _paced(ctx: Ctx, urls: list[str], total: int, prefix: str) -> dict[str, Any]:
    """`python -m tests.support.paced` in its own process (the load generator is never the bench process)."""
    cmd = [sys.executable, "-m", "tests.support.paced", "--token", ctx.tokens["sales"], "--total", str(total),
           "--rate", str(RATE), "--connections", str(CONNECTIONS), "--prefix", prefix]
    for url in urls:
        cmd += ["--url", url]
    before = children_cpu_s()
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), total / RATE + 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"paced load exited {proc.returncode}: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result["generator_cpu_s"] = children_cpu_s() - before
    return result


async def paced_create_rate(ctx: Ctx) -> dict[str, Any]:
    """Achieved vs target rate of N creations paced at 200/s over 2 create instances, 1 consumer, limit lifted."""
    ctx.wipe()
    total = ctx.n(2000, 600)
    env = {"RATE_LIMIT_MAX": "0", "NO_CONSUMER_FALLBACK": "true"}  # the production default: a real consumer runs
    servers = [ctx.function("create_user", env=env, instance=f"create_user-paced-{i}").launch() for i in range(2)]
    consumer = ctx.registry.add(ConsumerProc({**ctx.env, **env}, ctx.log_dir)).launch()
    try:
        await asyncio.gather(*(s.wait_answer() for s in servers), consumer.wait_started(ctx.stack.database_url))
        warm = await _paced(ctx, [s.url for s in servers], WARM_UP, f"paced-warm-{uuid.uuid4().hex[:8]}")
        prefix = f"paced-{uuid.uuid4().hex[:8]}"
        result = await _paced(ctx, [s.url for s in servers], total, prefix)
        deadline = time.monotonic() + 120
        async with ctx.db() as conn:
            while True:
                cur = await conn.execute("SELECT count(*) FILTER (WHERE status IN ('created', 'failed')) AS done,"
                                         " count(*) AS recorded FROM creation_requests")
                row = await cur.fetchone()
                if row is None:
                    raise RuntimeError("no count row")
                if row["done"] >= row["recorded"] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            cur = await conn.execute("SELECT count(*) AS users, count(DISTINCT email_normalized) AS distinct_users,"
                                     " count(*) FILTER (WHERE email LIKE %s) AS ours,"
                                     " count(DISTINCT email) FILTER (WHERE email = ANY(%s)) AS accepted_with_user"
                                     " FROM users", (prefix + "-%", result["accepted"] + warm["accepted"]))
            users = await cur.fetchone()
            if users is None:
                raise RuntimeError("no users row")
    finally:
        for process in [*servers, consumer]:
            ctx.registry.stop(process)
    answered = int(result["answered"])
    # answered 201/202, yet no user (warm-up included)
    lost = len(result["accepted"]) + len(warm["accepted"]) - int(users["accepted_with_user"])
    doubled = int(users["users"]) - int(users["distinct_users"])
    achieved = float(result["achieved_rate"])
    share = ratio(achieved, RATE)
    ctx.notes["paced_create_rate"] = (f"{answered}/{total} answered at {fmt(achieved)}/s, p99 {fmt(result['p99_ms'])}"
                                      f" ms; errors {result['errors'] or 0}; lost {lost}, doubled {doubled}; after"
                                      f" {WARM_UP} warm-up requests at {fmt(float(warm['achieved_rate']))}/s"
                                      f" ({warm['answered']} answered, errors {warm['errors'] or 0})")
    return case_result(
        figure=achieved, unit="req/s", limit=RATE, limit_desc=f"the target rate of the paced load ({total} requests)",
        ratio=share, goal="achieved/target >= 0.95; every request answered, none lost or doubled",
        goal_met=all_met(at_least(share, 0.95), lost == 0, doubled == 0, answered == total),
        accepted=len(result["accepted"]), unanswered=total - answered,
        requests=total, answered=answered, answers={str(k): v for k, v in sorted(result["codes"].items())},
        errors=result["errors"], p50_ms=result["p50_ms"], p99_ms=result["p99_ms"], elapsed_s=result["elapsed_s"],
        recorded=int(row["recorded"]), users=int(users["ours"]), lost=lost, doubled=doubled,
        warm_up_requests=WARM_UP, warm_up_achieved_rate=float(warm["achieved_rate"]),
        generator_cpu_ms_per_request=1000 * result["generator_cpu_s"] / total,
        generator_cores_used=result["generator_cpu_s"] / float(result["elapsed_s"]),
        warm_up_p99_ms=warm["p99_ms"], warm_up_answered=int(warm["answered"]), warm_up_errors=warm["errors"],
        connections=CONNECTIONS,
        load_generator="tests/support/paced.py (raw HTTP/1.1 keep-alive, open loop)",
        load_avg_1m=load_average()[0])
