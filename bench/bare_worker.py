"""A bare bullmq Worker with an empty processor: what the Python worker alone can drain (consumer limit (a)).

Same Redis, same options as the real consumer where they matter: concurrency 5, drainDelay 1, a client with a
15 s socket timeout. Prints READY after its first poll of the queue; once `--count` jobs completed it writes
{"first_job_at", "last_completed_at", "completed", "cpu_s"} (epoch seconds; CPU of the process while draining)
to `--result` and exits.

With `--database-url` its processor does the consumer's PostgreSQL work for each job and nothing else (no gate,
no SES, no email rate, no tracing): the attempt's start, `provision()` (the one creation statement, the email
claimed) and the statement that records a sent email, with the same pool settings. That is the consumer's
reference without the SES emulator's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from bullmq import Worker


class _Worker(Worker):  # type: ignore[misc]
    ready = False

    async def getNextJob(self, token: str) -> Any:
        job = await super().getNextJob(token)
        if not self.ready:
            self.ready = True
            print("READY", flush=True)
        return job


async def _sql_work(database_url: str) -> Any:
    """The consumer's PostgreSQL statements for one job (see the module docstring)."""
    from datetime import timedelta

    from shared.core import db
    from shared.creation.consumer import _ATTEMPT_STARTED
    from shared.creation.outbox import _RECORD_SENT, hash_token
    from shared.creation.provisioning import provision

    pool = db.make_pool(database_url, min_size=2, max_size=10, timeout_s=5, name="bench-bare-sql")
    await pool.open(wait=True)

    async def work(job: Any) -> None:
        request_id = job.data["request_id"]
        async with db.connection(pool) as conn:
            cur = await conn.execute(_ATTEMPT_STARTED, {"id": request_id, "attempt": 1, "consumer": "bare-sql",
                                                        "started_ms": None})
            row = await cur.fetchone()
        outcome = await provision(pool, request_id, source="bench", via="consumer", claim_email=True,
                                  attempt_id=row["id"] if row else None, email_lease_s=30)
        if outcome.email is not None:
            async with db.connection(pool) as conn:
                await conn.execute(_RECORD_SENT, {"id": outcome.email.outbox_id, "user": outcome.email.user_id,
                                                  "hash": hash_token(request_id), "provider_id": "bare",
                                                  "ttl": timedelta(hours=1)})

    return work


def _write(path: str, state: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(state))


async def run(args: argparse.Namespace) -> None:
    client = aioredis.Redis.from_url(args.redis_url, decode_responses=True, socket_timeout=15,
                                     socket_connect_timeout=5, health_check_interval=0, max_connections=64)
    done = asyncio.Event()
    state: dict[str, Any] = {"first_job_at": None, "last_completed_at": None, "completed": 0}

    sql_work = await _sql_work(args.database_url) if args.database_url else None

    async def processor(job: Any, token: str) -> None:
        if state["first_job_at"] is None:
            state["first_job_at"] = time.time()
            state["cpu0"] = sum(os.times()[:2])
        if sql_work is not None:
            await sql_work(job)

    def on_completed(job: Any, result: Any) -> None:
        state["completed"] += 1
        if state["completed"] >= args.count:
            state["last_completed_at"] = time.time()
            state["cpu_s"] = sum(os.times()[:2]) - state.get("cpu0", 0.0)
            done.set()

    worker = _Worker(args.queue, processor, {"connection": client, "prefix": args.prefix, "concurrency": 5,
                                             "drainDelay": 1, "autorun": False, "runRetryDelay": 1000})
    worker.on("completed", on_completed)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(done.wait(), args.timeout)
    finally:
        _write(args.result, state)
        await worker.close(force=True)
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--database-url", default=None, help="do the consumer's SQL per job (see above)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
