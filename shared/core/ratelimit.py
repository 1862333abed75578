"""A global sliding-window rate limit on job starts, shared by every consumer through Redis.

BullMQ's own limiter is a fixed window that the Python worker only re-checks after its blocking wait (about
2 jobs/s instead of 10 in our trials, and a burst of 2 x max across a window edge is possible). This gate is
exact: in any `duration_ms` window at most `max` jobs start, across all consumers, using Redis' clock.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from shared.core.redis_import import aioredis
from shared.core.redis_link import RedisLink, Script

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {0, now}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {math.max(1, tonumber(oldest[2]) + window - now), now}
"""


class StartGate:
    """`await gate.acquire()` returns when this job may start (and the Redis time, in ms, it started at)."""

    def __init__(self, client: aioredis.Redis, key: str, max_starts: int, duration_ms: int, *,
                 link: RedisLink | None = None) -> None:
        self.key = key
        self.max_starts = max_starts
        self.duration_ms = duration_ms
        self._script: Any = client.register_script(_ACQUIRE)
        self._client = client
        self._link = link  # the multiplexed connection (shared/core/redis_link.py) when the caller has one
        self._acquire = Script(_ACQUIRE)

    async def acquire(self) -> int | None:
        """Wait for a slot; None when the limit is off (max 0)."""
        if self.max_starts <= 0:
            return None
        member = uuid.uuid4().hex
        while True:
            wait_ms, now_ms = await self.try_acquire(member)
            if wait_ms == 0:
                return now_ms
            await asyncio.sleep(wait_ms / 1000)

    async def try_acquire(self, member: str) -> tuple[int, int]:
        """One attempt, one round trip: (0, Redis time in ms) when `member` got a slot, else (ms to wait, _)."""
        args = [self.max_starts, self.duration_ms, member]
        if self._link is not None:
            wait_ms, now_ms = await self._link.evalsha(self._acquire, [self.key], args)
        else:
            wait_ms, now_ms = await self._script(keys=[self.key], args=args)
        return int(wait_ms), int(now_ms)
