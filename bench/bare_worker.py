"""A bare bullmq Worker with an empty processor: what the Python worker alone can drain (consumer limit (a)).

Same Redis, same options as the real consumer where they matter: concurrency 5, drainDelay 1, a client with a
15 s socket timeout. Prints READY after its first poll of the queue; once `--count` jobs completed it writes
{"first_job_at", "last_completed_at", "completed"} (epoch seconds) to `--result` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


def _write(path: str, state: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(state))


async def run(args: argparse.Namespace) -> None:
    client = aioredis.Redis.from_url(args.redis_url, decode_responses=True, socket_timeout=15,
                                     socket_connect_timeout=5, health_check_interval=0, max_connections=64)
    done = asyncio.Event()
    state: dict[str, Any] = {"first_job_at": None, "last_completed_at": None, "completed": 0}

    async def processor(job: Any, token: str) -> None:
        if state["first_job_at"] is None:
            state["first_job_at"] = time.time()

    def on_completed(job: Any, result: Any) -> None:
        state["completed"] += 1
        if state["completed"] >= args.count:
            state["last_completed_at"] = time.time()
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
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
