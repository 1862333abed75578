"""The BullMQ queue adapter: enqueue creation jobs (ids and trace context only), read queue state and heartbeats.

The layout is BullMQ's own (queue `user-creation`, prefix `bull`), so BullMQ's tools can open it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.core import tracing
from shared.core.redis_import import NoBackoff, Retry, aioredis
from shared.core.redis_link import RedisLink, Script
from shared.core.settings import Settings

if TYPE_CHECKING:
    from bullmq import Queue

JOB_NAME = "create-user"
# BullMQ's keys of its addStandardJob script, in its order (bullmq's Scripts.addStandardJob).
_ADD_STANDARD_KEYS = ("wait", "paused", "meta", "id", "completed", "delayed", "active", "events", "marker")
JOB_STATES = ("waiting", "active", "completed", "failed", "delayed")


def request_path_client(url: str, timeout_s: float) -> aioredis.Redis:
    """A Redis client for the request path: short timeouts and no retry, so a sick Redis fails fast.

    (BullMQ's default client retries for minutes, which is what a request must never wait for.)
    """
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        max_connections=64,
    )


def job_options(settings: Settings, request_id: str) -> dict[str, Any]:
    """BullMQ job options: id = request id (so a re-enqueue is a no-op), retries, retention."""
    return {
        "jobId": request_id,
        "attempts": settings.job_attempts,
        "backoff": {"type": "exponential", "delay": settings.job_backoff_ms},
        "removeOnComplete": settings.keep_completed,
        "removeOnFail": settings.keep_failed,
    }


class JobQueue:
    """Owns a bullmq `Queue` bound to an injected Redis client (closed with it)."""

    def __init__(self, client: aioredis.Redis, settings: Settings, link: RedisLink | None = None) -> None:
        self.client = client
        self.settings = settings
        self.link = link
        self._queue: Queue | None = None
        self._add_standard: tuple[Script, list[str]] | None = None
        base = f"{settings.queue_prefix}:{settings.queue_name}"
        self.consumers_key = f"{base}:provisioner:consumers"
        self.consumer_key_prefix = f"{base}:provisioner:consumer:"

    @property
    def queue(self) -> Queue:
        """The bullmq `Queue`, made on first use: bullmq (and its Lua scripts) is imported only by an instance
        that enqueues or reads the queue (15-30 ms of a cold start otherwise)."""
        if self._queue is None:
            from bullmq import Queue

            self._queue = Queue(self.settings.queue_name, {"connection": self.client,
                                                           "prefix": self.settings.queue_prefix,
                                                           "skipVersionCheck": True})
        return self._queue

    async def enqueue(self, request_id: str, *, traceparent: str | None = None,
                      timeout_s: float | None = None) -> None:
        """Add the creation job; raises on timeout or any Redis error (the caller falls back).

        `traceparent` (the W3C context recorded with the request; not a secret, no PII) rides in the job, so the
        consumer continues the request's trace without reading it back from PostgreSQL; "" says the request
        had none (no read either); None (the reconciler) leaves the consumer to read the row."""
        data = {"request_id": request_id, **({"traceparent": traceparent} if traceparent is not None else {})}
        with tracing.span("redis.enqueue", kind="PRODUCER", attributes={"request_id": request_id}):
            queue = self.queue  # made (and bullmq imported) on first use: not inside the Redis time budget
            timeout = timeout_s or self.settings.redis_timeout_s * 2
            if self.link is None:
                async with asyncio.timeout(timeout):  # no extra task per job
                    await queue.add(JOB_NAME, data, job_options(self.settings, request_id))
                return
            await self._add_on_link(queue, self.link, data, request_id, timeout)

    async def _add_on_link(self, queue: Queue, link: RedisLink, data: dict[str, Any], request_id: str,
                           timeout_s: float) -> None:
        """`Queue.add` on the multiplexed link: bullmq's own Job, argument packing, keys and addStandardJob
        script (so the job is byte for byte what `Queue.add` writes), sent as one EVALSHA."""
        from bullmq import Job

        job = Job(queue, JOB_NAME, data, {**queue.jobsOpts, **job_options(self.settings, request_id)})
        scripts = queue.scripts
        if self._add_standard is None:
            command = scripts.commands["addStandardJob"]
            self._add_standard = (Script(command.script, command.sha), scripts.getKeys(list(_ADD_STANDARD_KEYS)))
        script, keys = self._add_standard
        result = await link.evalsha(script, keys, [*scripts.addJobArgs(job), job.timestamp], timeout_s=timeout_s)
        if isinstance(result, int) and result < 0:
            raise scripts.finishedErrors({"code": result, "parentKey": None, "command": "addJob"})

    async def enqueue_many(self, request_ids: list[str], *, timeout_s: float | None = None) -> None:
        """Add many creation jobs in one round trip (bullmq's `addBulk`: one MULTI pipeline, so a chunk lands
        whole or not at all); raises on timeout or any Redis error."""
        jobs = [{"name": JOB_NAME, "data": {"request_id": request_id},
                 "opts": job_options(self.settings, request_id)} for request_id in request_ids]
        await asyncio.wait_for(self.queue.addBulk(jobs), timeout_s or max(2.0, self.settings.redis_timeout_s * 8))

    async def remove_job(self, job_id: str) -> None:
        """Delete a finished job (so its id can be used again); a missing job is fine."""
        await asyncio.wait_for(self.queue.remove(job_id), self.settings.redis_timeout_s * 4)

    async def ping_ms(self) -> float:
        """Round trip to Redis in milliseconds; raises when Redis does not answer in time."""
        started = time.perf_counter()
        await asyncio.wait_for(self.client.ping(), self.settings.redis_timeout_s * 2)
        return (time.perf_counter() - started) * 1000

    async def counts(self) -> dict[str, int]:
        """Job counts by state, as BullMQ reports them."""
        counts = await asyncio.wait_for(self.queue.getJobCounts(*JOB_STATES), self.settings.redis_timeout_s * 2)
        return {state: int(counts.get(state, 0)) for state in JOB_STATES}

    async def live_consumers(self, *, details: bool = True) -> list[dict[str, Any]]:
        """Consumers whose heartbeat is younger than the TTL, newest first (with their last job time)."""
        now_ms = int(time.time() * 1000)

        async def read() -> list[dict[str, Any]]:
            rows: Any = await self.client.zrevrangebyscore(
                self.consumers_key, "+inf", now_ms - self.settings.consumer_heartbeat_ttl_s * 1000, withscores=True)
            items: list[dict[str, Any]] = [{"name": str(name), "last_seen": _iso(float(score))}
                                           for name, score in rows]
            if details and items:
                async with self.client.pipeline(transaction=False) as pipe:
                    for item in items:
                        pipe.hget(self.consumer_key_prefix + item["name"], "last_job_at")
                    last_jobs = await pipe.execute()
                for item, last_job in zip(items, last_jobs, strict=True):
                    item["last_job_at"] = _iso(float(last_job)) if last_job else None
            return items

        return await asyncio.wait_for(read(), self.settings.redis_timeout_s * 2)

    async def heartbeat(self, name: str, info: Mapping[str | bytes, str | int | float]) -> None:
        """Say this consumer is alive (for CONSUMER_HEARTBEAT_TTL_S); prune consumers silent for 10 TTLs."""
        now_ms = int(time.time() * 1000)
        key = self.consumer_key_prefix + name
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zadd(self.consumers_key, {name: now_ms})
            pipe.zremrangebyscore(self.consumers_key, "-inf", now_ms - self.settings.consumer_heartbeat_ttl_s * 10_000)
            pipe.hset(key, mapping=dict(info.items()))
            pipe.expire(key, self.settings.consumer_heartbeat_ttl_s)
            await pipe.execute()

    async def forget_consumer(self, name: str) -> None:
        """Remove a consumer that stops cleanly, so it is not counted alive for the rest of its TTL."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.consumers_key, name)
            pipe.delete(self.consumer_key_prefix + name)
            await pipe.execute()

    async def close(self) -> None:
        """Close the queue, its Redis client and the link."""
        if self.link is not None:
            await self.link.aclose()
        if self._queue is not None:
            await self._queue.close()
        else:
            await self.client.aclose()


def _iso(epoch_ms: float) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat()
