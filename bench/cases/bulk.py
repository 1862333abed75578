"""Bulk case: a 5,000-row upload answered against BullMQ's own bulk add, then the rows drained at the rate limit."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from typing import Any

import httpx

from bench.cases.consumer import _attempt_times, _start_consumers, _stop_all
from bench.context import Ctx, auth, load_average
from bench.report import all_met, at_least, at_most, case_result, fmt, max_in_window, ratio, steady_rate
from shared.creation.queueing import JOB_NAME, job_options

# The drain runs under a raised limit so 5,000 rows take under a minute: 100 starts per 1000 ms, a rate two
# consumers sustain on a 2-core machine (their unlimited drain is about 180 users/s in consumer_2_processes).
DRAIN_LIMIT = {"RATE_LIMIT_MAX": "100", "RATE_LIMIT_DURATION_MS": "1000", "CONSUMER_CONCURRENCY": "10"}


def _csv(rows: int, tag: str) -> bytes:
    lines = ["email,full_name,phone,product"]
    lines += [f"bulk-{tag}-{i}@example.com,Bulk Buyer {i},+1 555 {i:04d},webinar" for i in range(rows)]
    return ("\r\n".join(lines) + "\r\n").encode()


async def _bullmq_add_bulk_s(ctx: Ctx, rows: int) -> float:
    """BullMQ's own bulk add: one `Queue.addBulk` of `rows` jobs (our job options) on a scratch queue."""
    queue = ctx.queue(f"bench-addbulk-{uuid.uuid4().hex[:6]}")
    try:
        jobs = [{"name": JOB_NAME, "data": {"request_id": f"req_ab{i:06d}"},
                 "opts": job_options(ctx.settings, f"req_ab{i:06d}")} for i in range(rows)]
        started = time.perf_counter()
        await queue.addBulk(jobs)
        return time.perf_counter() - started
    finally:
        await queue.obliterate(force=True)
        await queue.close()


async def bulk_upload_5000(ctx: Ctx) -> dict[str, Any]:
    """POST /api/users/bulk with 5,000 rows (202) against BullMQ's addBulk of 5,000 jobs; then the drain rate."""
    rows = ctx.n(5000, 1000)
    rounds = 3
    server = await ctx.function("bulk_upload", instance="bulk_upload-main").start()
    upload_s: list[float] = []
    add_bulk_s: list[float] = []
    answer: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        warm = await client.post("/api/users/bulk", content=_csv(2, "warm"),
                                 headers={**auth(ctx.tokens["sales"]), "Content-Type": "text/csv"})
        if warm.status_code != 202:
            raise RuntimeError(f"warm-up upload answered {warm.status_code}: {warm.text[:300]}")
        for i in range(rounds):  # alternate, so a busy spell of the machine hits both
            ctx.wipe()
            add_bulk_s.append(await _bullmq_add_bulk_s(ctx, rows))
            ctx.wipe()
            queue = ctx.queue()
            await queue.pause()  # the last round's rows wait for the drain measurement
            await queue.close()
            content = _csv(rows, f"{i}-{uuid.uuid4().hex[:6]}")
            started = time.perf_counter()
            response = await client.post("/api/users/bulk", content=content,
                                         headers={**auth(ctx.tokens["sales"]), "Content-Type": "text/csv"})
            upload_s.append(time.perf_counter() - started)
            answer = response.json()
            if response.status_code != 202 or answer.get("accepted") != rows or answer.get("path") != "queue":
                raise RuntimeError(f"upload answered {response.status_code}: {response.text[:300]}")
            ctx.progress(f"  round {i + 1}/{rounds}: upload {fmt(upload_s[-1])} s, addBulk {fmt(add_bulk_s[-1])} s")
    upload, add_bulk = statistics.median(upload_s), statistics.median(add_bulk_s)
    share = ratio(upload, add_bulk)

    # The drain: the last upload's rows, on the paused queue, consumed at DRAIN_LIMIT by two consumers.
    async with ctx.db() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM creation_requests WHERE batch_id = %s",
                                 (answer["batch_id"],))
        recorded = (await cur.fetchone() or {}).get("n")
    if recorded != rows:
        raise RuntimeError(f"{recorded} requests recorded for {rows} rows")
    procs = await _start_consumers(ctx, 2, **DRAIN_LIMIT)
    queue = ctx.queue()
    try:
        await queue.resume()
        deadline = time.monotonic() + rows / int(DRAIN_LIMIT["RATE_LIMIT_MAX"]) * 3 + 60
        async with ctx.db() as conn:
            while True:
                cur = await conn.execute("SELECT count(*) FILTER (WHERE status IN ('created', 'failed')) AS done,"
                                         " count(*) FILTER (WHERE status = 'failed') AS failed"
                                         " FROM creation_requests WHERE batch_id = %s", (answer["batch_id"],))
                row = await cur.fetchone() or {}
                if row.get("done", 0) >= rows:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {row.get('done')} of {rows} rows done in time")
                await asyncio.sleep(0.2)
    finally:
        await _stop_all(ctx, procs)
        await queue.close()
    if row.get("failed"):
        raise RuntimeError(f"{row['failed']} rows failed while draining")
    times = await _attempt_times(ctx)
    limit_per_s = int(DRAIN_LIMIT["RATE_LIMIT_MAX"]) * 1000 / int(DRAIN_LIMIT["RATE_LIMIT_DURATION_MS"])
    rate = steady_rate(times, int(DRAIN_LIMIT["RATE_LIMIT_DURATION_MS"]))
    fullest = max_in_window(times, int(DRAIN_LIMIT["RATE_LIMIT_DURATION_MS"]))
    drain_share = ratio(rate, limit_per_s)
    ctx.notes["bulk_upload_5000"] = (f"addBulk {fmt(add_bulk * 1000)} ms; drain {fmt(rate)}/s at a limit of "
                                     f"{fmt(limit_per_s)}/s (ratio {fmt(drain_share)}), fullest window {fullest}")
    return case_result(
        figure=upload * 1000, unit="ms", limit=add_bulk * 1000,
        limit_desc=f"bullmq Queue.addBulk of {rows} jobs (our job options) from the bench process, same Redis, "
                   f"median of {rounds}, alternating with the uploads",
        ratio=share,
        goal=f"ratio (upload -> 202 / addBulk) <= 3, every answer 202 with {rows} accepted; then the rows drain at "
             f"the configured limit: ratio (starts/s / limit) in 0.95..1.05, never more than "
             f"{DRAIN_LIMIT['RATE_LIMIT_MAX']} starts in any window",
        goal_met=all_met(at_most(share, 3.0), at_least(drain_share, 0.95), at_most(drain_share, 1.05),
                         fullest <= int(DRAIN_LIMIT["RATE_LIMIT_MAX"])),
        rows=rows, upload_samples_ms=[round(s * 1000, 1) for s in upload_s],
        add_bulk_samples_ms=[round(s * 1000, 1) for s in add_bulk_s], drain_rate_per_s=rate,
        drain_limit_per_s=limit_per_s, drain_ratio=drain_share, drain_max_starts_in_window=fullest,
        drain_starts=len(times), drain_consumers=2, load_avg_1m=load_average()[0])
