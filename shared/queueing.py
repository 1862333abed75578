"""The BullMQ queue adapter: enqueue creation jobs (ids only), read queue state and consumer heartbeats.

The layout is BullMQ's own (queue `user-creation`, prefix `bull`), so BullMQ's tools can open it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from bullmq import Queue
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from shared.settings import Settings

JOB_NAME = "create-user"
JOB_STATES = ("waiting", "active", "completed", "failed", "delayed")
HEARTBEAT_TTL_S = 30


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

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.queue = Queue(settings.queue_name, {"connection": client, "prefix": settings.queue_prefix,
                                                  "skipVersionCheck": True})
        base = f"{settings.queue_prefix}:{settings.queue_name}"
        self.consumers_key = f"{base}:provisioner:consumers"
        self.consumer_key_prefix = f"{base}:provisioner:consumer:"

    async def enqueue(self, request_id: str, *, timeout_s: float | None = None) -> None:
        """Add the creation job; raises on timeout or any Redis error (the caller falls back)."""
        add = self.queue.add(JOB_NAME, {"request_id": request_id}, job_options(self.settings, request_id))
        await asyncio.wait_for(add, timeout_s or self.settings.redis_timeout_s * 2)

    async def ping_ms(self) -> float:
        """Round trip to Redis in milliseconds; raises when Redis does not answer in time."""
        started = time.perf_counter()
        await asyncio.wait_for(self.client.ping(), self.settings.redis_timeout_s * 2)
        return (time.perf_counter() - started) * 1000

    async def counts(self) -> dict[str, int]:
        """Job counts by state, as BullMQ reports them."""
        counts = await asyncio.wait_for(self.queue.getJobCounts(*JOB_STATES), self.settings.redis_timeout_s * 2)
        return {state: int(counts.get(state, 0)) for state in JOB_STATES}

    async def live_consumers(self) -> list[dict[str, Any]]:
        """Consumers whose heartbeat is younger than the TTL, newest first."""
        now_ms = int(time.time() * 1000)
        rows: Any = await asyncio.wait_for(
            self.client.zrevrangebyscore(self.consumers_key, "+inf", now_ms - HEARTBEAT_TTL_S * 1000,
                                         withscores=True),
            self.settings.redis_timeout_s * 2,
        )
        return [{"name": str(name), "last_seen": _iso(float(score))} for name, score in rows]

    async def close(self) -> None:
        """Close the queue and its Redis client."""
        await self.queue.close()


def _iso(epoch_ms: float) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat()
