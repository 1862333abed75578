"""Consumer cases: drain throughput (1 and 2 processes), the global rate limit, and job pickup latency."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from bench.context import Ctx, load_average
from bench.procs import BareWorkerProc, ConsumerProc, tree_cpu_s, tree_rss_hwm_mb
from bench.report import all_met, at_least, at_most, case_result, fmt, max_in_window, percentile, ratio, steady_rate
from shared.creation.queueing import JOB_NAME, job_options


async def _stop_all(ctx: Ctx, procs: list[Any]) -> None:
    await asyncio.gather(*(asyncio.to_thread(ctx.registry.stop, p) for p in procs))


async def _start_consumers(ctx: Ctx, count: int, make: Callable[[], ConsumerProc] | None = None,
                           **overrides: str) -> list[ConsumerProc]:
    """`count` consumers (ours, or what `make` builds: the peer's worker), each once its consumer_started is in."""
    make = make or (lambda: ConsumerProc(ctx.env, ctx.log_dir, **overrides))
    consumers = [ctx.registry.add(make()).launch() for _ in range(count)]
    try:
        await asyncio.gather(*(c.wait_started(ctx.stack.database_url) for c in consumers))
    except BaseException:
        await _stop_all(ctx, consumers)
        raise
    return consumers


async def _attempt_times(ctx: Ctx) -> list[float]:
    async with ctx.db() as conn:
        cur = await conn.execute("SELECT extract(epoch FROM started_at) * 1000 AS t FROM creation_attempts"
                                 " ORDER BY started_at")
        return [float(row["t"]) for row in await cur.fetchall()]


async def _wait_done(ctx: Ctx, conn: Any, count: int, timeout_s: float) -> dict[str, Any]:
    """Until `count` requests are created or failed; the counts."""
    deadline = time.monotonic() + timeout_s
    while True:
        cur = await conn.execute("SELECT count(*) FILTER (WHERE status = 'created') AS created,"
                                 " count(*) FILTER (WHERE status = 'failed') AS failed FROM creation_requests")
        row: dict[str, Any] | None = await cur.fetchone()
        if row is None:
            raise RuntimeError("no count row")
        if row["created"] + row["failed"] >= count:
            return row
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {row['created']} of {count} created within {timeout_s} s")
        await asyncio.sleep(0.05)


# Requests a consumer drains before the measured ones (both runs): its first jobs pay one-time costs (every pool
# connection opened and its statements prepared, the SES emulator's connection, first collections) that a few
# hundred users cannot amortise (bench/README.md, "Warm-up"). Their CPU is reported, not hidden.
DRAIN_WARM_UP = 200


async def drain(ctx: Ctx, *, consumers: int, requests: int, timeout_s: float,
                make: Callable[[], ConsumerProc] | None = None, warm_up: int = 0,
                **overrides: str) -> dict[str, Any]:
    """Pre-queue `requests` on a paused queue, start the consumers, resume, time until all are created.

    t0 is the resume (every consumer has logged `consumer_started` by then, so process start-up is not
    counted); the end is the last attempt's finish. With `warm_up`, the started consumers first drain that many
    requests (queued and resumed the same way); the measured requests are queued after those are done.
    """
    ctx.wipe()
    queue = ctx.queue()
    await queue.pause()
    warm_cpu_s = 0.0
    if not warm_up:
        ids = await ctx.create_requests(requests)
    procs = await _start_consumers(ctx, consumers, make, **overrides)
    try:
        async with ctx.db() as conn:
            if warm_up:
                await ctx.create_requests(warm_up)
                cpu_w = sum(tree_cpu_s(p.pid) for p in procs)
                await queue.resume()
                await _wait_done(ctx, conn, warm_up, timeout_s)
                warm_cpu_s = sum(tree_cpu_s(p.pid) for p in procs) - cpu_w
                await queue.pause()
                ids = await ctx.create_requests(requests)
            cpu0 = sum(tree_cpu_s(p.pid) for p in procs)
            t0 = time.time()
            await queue.resume()
            row = await _wait_done(ctx, conn, warm_up + len(ids), timeout_s)
            cpu_s = sum(tree_cpu_s(p.pid) for p in procs) - cpu0
            rss = [tree_rss_hwm_mb(p.pid) for p in procs]
            cur = await conn.execute("SELECT extract(epoch FROM max(finished_at)) AS t_end,"
                                     " extract(epoch FROM min(started_at)) AS t_first, count(*) AS attempts"
                                     " FROM creation_attempts WHERE request_id = ANY(%s)", (ids,))
            times = await cur.fetchone()
            if times is None:
                raise RuntimeError("no attempts row")
    finally:
        await _stop_all(ctx, procs)
        await queue.close()
    if row["failed"]:
        raise RuntimeError(f"{row['failed']} requests failed while draining")
    elapsed = float(times["t_end"]) - t0
    return {"rate": len(ids) / elapsed, "elapsed_s": elapsed, "requests": len(ids), "attempts": times["attempts"],
            "first_start_after_resume_ms": (float(times["t_first"]) - t0) * 1000,
            "cpu_s_per_1000_users": 1000 * cpu_s / len(ids),
            "warm_up_requests": warm_up,
            "warm_up_cpu_ms_per_user": 1000 * warm_cpu_s / warm_up if warm_up else None,
            "rss_hwm_mb_per_process": [r["tree_mb"] for r in rss]}


async def _timed_bare_drain(ctx: Ctx, queue: Any, proc: BareWorkerProc, jobs: int, what: str
                            ) -> tuple[dict[str, Any], float]:
    """Launch a bare worker on a paused queue, resume once it polls (READY), wait until it has drained `jobs`:
    (its result, the resume time)."""
    worker = ctx.registry.add(proc).launch()
    try:
        await worker.wait_line("READY")
        t0 = time.time()
        await queue.resume()
        deadline = time.monotonic() + 120
        while worker.running():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not drain in 120 s")
            await asyncio.sleep(0.05)
        result = worker.result()
    finally:
        await asyncio.to_thread(ctx.registry.stop, worker)
    if result["completed"] < jobs or result["last_completed_at"] is None:
        raise RuntimeError(f"{what} completed {result['completed']} of {jobs}")
    return result, t0


async def bare_worker_rate(ctx: Ctx, jobs: int) -> dict[str, Any]:
    """Limit (a): a bare bullmq Worker (empty processor, concurrency 5) draining as many pre-queued jobs."""
    name = f"bench-bare-{uuid.uuid4().hex[:6]}"
    queue = ctx.queue(name)
    try:
        await queue.pause()
        for start in range(0, jobs, 500):
            batch = []
            for i in range(start, min(jobs, start + 500)):
                job_id = f"req_bare{i:06d}"
                batch.append({"name": JOB_NAME, "data": {"request_id": job_id},
                              "opts": job_options(ctx.settings, job_id)})
            await queue.addBulk(batch)
        result, t0 = await _timed_bare_drain(
            ctx, queue, BareWorkerProc(ctx.stack.redis_url, ctx.stack.queue_prefix, name, jobs, ctx.log_dir),
            jobs, "bare worker")
        elapsed = float(result["last_completed_at"]) - t0
        return {"rate": jobs / elapsed, "elapsed_s": elapsed}
    finally:
        await queue.obliterate(force=True)
        await queue.close()


async def bare_sql_worker_rate(ctx: Ctx, requests: int) -> dict[str, Any]:
    """Limit (c): a bare bullmq Worker doing only the consumer's SQL per job (no SES, no gate, no tracing),
    draining as many real pre-queued requests the same way as `drain` (paused queue, READY, resume)."""
    ctx.wipe()
    queue = ctx.queue()
    try:
        await queue.pause()
        ids = await ctx.create_requests(requests)
        result, t0 = await _timed_bare_drain(
            ctx, queue, BareWorkerProc(ctx.stack.redis_url, ctx.stack.queue_prefix, ctx.settings.queue_name,
                                       len(ids), ctx.log_dir, database_url=ctx.stack.database_url),
            len(ids), "bare SQL worker")
        async with ctx.db() as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM users")
            users = (await cur.fetchone() or {"n": 0})["n"]
        if users != len(ids):
            raise RuntimeError(f"bare SQL worker made {users} users of {len(ids)}")
        elapsed = float(result["last_completed_at"]) - t0
        return {"rate": len(ids) / elapsed, "elapsed_s": elapsed, "cpu_ms_per_job": 1000 * result["cpu_s"] / len(ids)}
    finally:
        await queue.close()


def plain_insert_rate(database_url: str, rows: int) -> float:
    """Limit (b): plain psycopg, one connection, one INSERT and one commit per row into a scratch table."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_scratch (id uuid PRIMARY KEY, email text NOT NULL UNIQUE,"
                     " full_name text NOT NULL, request_id text NOT NULL,"
                     " created_at timestamptz NOT NULL DEFAULT now())")
        try:
            started = time.perf_counter()
            for i in range(rows):
                conn.execute("INSERT INTO bench_scratch (id, email, full_name, request_id) VALUES (%s, %s, %s, %s)",
                             (uuid.uuid4(), f"scratch-{i}@example.com", f"Bench User {i}", f"req_scratch{i}"))
            elapsed = time.perf_counter() - started
        finally:
            conn.execute("DROP TABLE bench_scratch")
    return rows / elapsed


NO_LIMIT = {"RATE_LIMIT_MAX": "0", "CONSUMER_CONCURRENCY": "5"}
CPU_MS_PER_USER_GOAL = 1.5  # issue 16
# Before issue 16 (commit 6036509, 2026-11-29, this machine, quiet): about 20 PostgreSQL round trips per user, a
# transaction open across the SES call, boto3 in a thread per email. It cannot be re-measured in the same run
# (the code is gone), so the 3x goal's ratio is against these recorded figures; `users_per_s_full` is the
# figure the issue quotes.
BASELINE: dict[str, Any] = {"commit": "6036509", "date": "2026-11-29", "users_per_s_quick": 121.0,
                            "users_per_s_full": 145.0, "cpu_ms_per_user": 5.2, "pg_round_trips_per_user": 20}


async def consumer_1_process(ctx: Ctx) -> dict[str, Any]:
    """Users/s of one consumer (no rate limit, concurrency 5, email to the SES emulator)."""
    requests = ctx.n(1000, 300)
    result = await drain(ctx, consumers=1, requests=requests, timeout_s=180, warm_up=DRAIN_WARM_UP, **NO_LIMIT)
    ctx.shared["consumer_1"] = result
    bare = await bare_worker_rate(ctx, requests)
    bare_sql = await bare_sql_worker_rate(ctx, requests)
    inserts = await asyncio.to_thread(plain_insert_rate, ctx.stack.database_url, requests)
    share = ratio(result["rate"], bare["rate"])
    cpu_ms = result["cpu_s_per_1000_users"]  # s per 1,000 users = ms per user
    ctx.notes["consumer_1_process"] = (f"bare worker {fmt(bare['rate'])}/s, bare worker + our SQL"
                                       f" {fmt(bare_sql['rate'])}/s ({fmt(bare_sql['cpu_ms_per_job'])} ms CPU/job),"
                                       f" psycopg {fmt(inserts)} rows/s; CPU {fmt(cpu_ms)} ms/user (goal <= 1.5);"
                                       f" RSS {fmt(result['rss_hwm_mb_per_process'][0])} MB")
    return case_result(
        figure=result["rate"], unit="users/s", limit=bare["rate"],
        limit_desc="(a) bare bullmq Worker, empty processor, concurrency 5, same Redis, same number of jobs",
        ratio=share, goal="ratio (consumer / bare worker) >= 0.70; consumer CPU <= 1.5 ms per user",
        goal_met=all_met(at_least(share, 0.70), at_most(cpu_ms, CPU_MS_PER_USER_GOAL)),
        requests=result["requests"], elapsed_s=result["elapsed_s"], attempts=result["attempts"],
        first_start_after_resume_ms=result["first_start_after_resume_ms"],
        bare_worker_elapsed_s=bare["elapsed_s"],
        bare_sql_worker_users_per_s=bare_sql["rate"], ratio_vs_bare_sql_worker=ratio(result["rate"], bare_sql["rate"]),
        bare_sql_worker_cpu_ms_per_job=bare_sql["cpu_ms_per_job"],
        bare_sql_worker_desc="(c) bare bullmq Worker doing only the consumer's SQL per job (attempt start, the"
                             " creation statement, the sent-email record): no SES, no gates, no tracing",
        plain_insert_rows_per_s=inserts, ratio_vs_plain_inserts=ratio(result["rate"], inserts),
        consumer_cpu_ms_per_user=cpu_ms, consumer_cpu_ms_per_user_goal=CPU_MS_PER_USER_GOAL,
        warm_up_requests=result["warm_up_requests"], warm_up_cpu_ms_per_user=result["warm_up_cpu_ms_per_user"],
        consumer_cpu_ms_per_user_met=at_most(cpu_ms, CPU_MS_PER_USER_GOAL),
        consumer_cpu_s_per_1000_users=cpu_ms, baseline=BASELINE,
        ratio_vs_baseline_users_per_s=ratio(result["rate"], BASELINE["users_per_s_quick" if ctx.quick
                                                                      else "users_per_s_full"]),
        consumer_rss_hwm_mb=result["rss_hwm_mb_per_process"][0], load_avg_1m=load_average()[0])


async def consumer_2_processes(ctx: Ctx) -> dict[str, Any]:
    """Users/s of two consumer processes against one (case consumer_1_process)."""
    requests = ctx.n(1000, 300)
    one = ctx.shared.get("consumer_1") or await drain(ctx, consumers=1, requests=requests, timeout_s=180,
                                                      warm_up=DRAIN_WARM_UP, **NO_LIMIT)
    result = await drain(ctx, consumers=2, requests=requests, timeout_s=180, warm_up=DRAIN_WARM_UP, **NO_LIMIT)
    share = ratio(result["rate"], one["rate"])
    ctx.notes["consumer_2_processes"] = f"CPU {fmt(result['cpu_s_per_1000_users'])} s/1k (both)"
    return case_result(
        figure=result["rate"], unit="users/s", limit=one["rate"],
        limit_desc="one consumer process in this run (consumer_1_process), same number of requests",
        ratio=share, goal="ratio (2 processes / 1 process) >= 1.3", goal_met=at_least(share, 1.3),
        requests=result["requests"], elapsed_s=result["elapsed_s"],
        first_start_after_resume_ms=result["first_start_after_resume_ms"],
        consumer_cpu_s_per_1000_users=result["cpu_s_per_1000_users"],
        consumer_rss_hwm_mb=result["rss_hwm_mb_per_process"], load_avg_1m=load_average()[0])


async def rate_limit_10_per_s(ctx: Ctx) -> dict[str, Any]:
    """Two consumers under the default global limit: starts per second and the fullest 1 s window."""
    s = ctx.settings
    if s.rate_limit_max <= 0:
        raise RuntimeError("RATE_LIMIT_MAX is 0 in this environment: nothing to measure")
    per_s = s.rate_limit_max * 1000 / s.rate_limit_duration_ms
    work_s = ctx.n(10, 5)
    requests = max(2 * s.rate_limit_max, round(per_s * work_s))
    result = await drain(ctx, consumers=2, requests=requests, timeout_s=work_s * 3 + 60)
    times = await _attempt_times(ctx)
    rate = steady_rate(times, s.rate_limit_duration_ms)
    fullest = max_in_window(times, s.rate_limit_duration_ms)
    share = ratio(rate, per_s)
    ctx.notes["rate_limit_10_per_s"] = f"fullest {s.rate_limit_duration_ms} ms window: {fullest} starts"
    return case_result(
        figure=rate, unit="starts/s", limit=per_s,
        limit_desc=f"configured RATE_LIMIT_MAX / RATE_LIMIT_DURATION_MS = {s.rate_limit_max} per "
                   f"{s.rate_limit_duration_ms} ms (from settings)",
        ratio=share, goal=f"ratio (starts/s / limit) in 0.95..1.05 and never > {s.rate_limit_max} starts in any "
                          f"{s.rate_limit_duration_ms} ms window",
        goal_met=all_met(at_least(share, 0.95), at_most(share, 1.05), fullest <= s.rate_limit_max),
        max_starts_in_window=fullest, starts=len(times), span_s=(times[-1] - times[0]) / 1000,
        naive_rate=(len(times) - 1) / ((times[-1] - times[0]) / 1000), consumers=2,
        elapsed_s=result["elapsed_s"], load_avg_1m=load_average()[0])


async def idle_pickup(ctx: Ctx) -> dict[str, Any]:
    """add -> start latency after an idle spell, against the same latency while the consumer is busy."""
    ctx.wipe()
    idle_s = ctx.n(10.0, 3.0)
    samples = ctx.n(20, 8)
    deps = await ctx.deps()
    added: dict[str, float] = {}
    original = deps.queue.enqueue

    async def timed_enqueue(request_id: str, *, traceparent: str | None = None,
                            timeout_s: float | None = None) -> None:
        added[request_id] = time.time()  # same machine, same clock as PostgreSQL's and Redis' timestamps
        await original(request_id, traceparent=traceparent, timeout_s=timeout_s)

    deps.queue.enqueue = timed_enqueue  # type: ignore[method-assign]
    procs = await _start_consumers(ctx, 1)
    try:
        async with ctx.db() as conn:

            async def pickup_ms(request_id: str) -> float:
                deadline = time.monotonic() + 15
                while True:
                    cur = await conn.execute("SELECT extract(epoch FROM min(started_at)) AS t FROM creation_attempts"
                                             " WHERE request_id = %s", (request_id,))
                    row = await cur.fetchone()
                    if row and row["t"] is not None:
                        return (float(row["t"]) - added[request_id]) * 1000
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"request {request_id} never started")
                    await asyncio.sleep(0.02)

            idle: list[float] = []
            for i in range(samples):
                ctx.progress(f"  idle sample {i + 1}/{samples} after {idle_s:g} s idle")
                await asyncio.sleep(idle_s)
                [request_id] = await ctx.create_requests(1, concurrency=1)
                idle.append(await pickup_ms(request_id))

            stop_stream = asyncio.Event()

            async def stream() -> None:  # a steady 4 requests/s, well under the rate limit
                while not stop_stream.is_set():
                    await ctx.create_requests(1, concurrency=1)
                    await asyncio.sleep(0.25)

            background = asyncio.create_task(stream())
            busy_ids: list[str] = []
            try:
                await asyncio.sleep(1.0)
                for _ in range(samples):
                    busy_ids += await ctx.create_requests(1, concurrency=1)
                    await asyncio.sleep(0.5)
            finally:
                stop_stream.set()
                await background
            busy = [await pickup_ms(r) for r in busy_ids]
    finally:
        deps.queue.enqueue = original  # type: ignore[method-assign]
        await _stop_all(ctx, procs)
    idle_p99, busy_p99 = percentile(idle, 99), percentile(busy, 99)
    ctx.notes["idle_pickup"] = f"idle p50 {fmt(percentile(idle, 50))} ms, busy p50 {fmt(percentile(busy, 50))} ms"
    return case_result(
        figure=idle_p99, unit="ms", limit=busy_p99,
        limit_desc=f"p99 pickup while busy (steady 4 requests/s + samples every 0.5 s), {samples} samples",
        ratio=ratio(idle_p99, busy_p99),
        goal=f"p99 add->start <= 50 ms after {idle_s:g} s idle and while busy (ratio = idle / busy)",
        goal_met=all_met(at_most(idle_p99, 50.0), at_most(busy_p99, 50.0)),
        idle_samples_ms=sorted(idle), busy_samples_ms=sorted(busy), idle_p50_ms=percentile(idle, 50),
        busy_p50_ms=percentile(busy, 50), idle_s=idle_s,
        percentile_note=f"nearest rank: with {samples} samples p99 is the largest", load_avg_1m=load_average()[0])
