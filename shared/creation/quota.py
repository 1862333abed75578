"""The per-caller creation quota: at most `CREATE_QUOTA_PER_MINUTE` accepted creations per caller (`sub`) in any
60 s, counted in Redis so that every function instance shares one count.

A sliding-window log: one sorted set per caller (its key holds a hash of the `sub`, never the `sub` itself),
one member per accepted creation, scored by Redis' own clock. `charge(n)` is one Lua script, so one round trip
and atomic across instances: it drops members older than the window, then adds `n` members only if all `n` fit
(a bulk upload charges all its rows at once, or none). When they do not fit it answers how long until enough
old members expire (the `Retry-After`). A charge for a creation that is then not accepted (a replay, a 409, an
error) is given back with `refund`.

When Redis cannot be used the quota fails open (serving users beats refusing them while the queue is down
anyway): the first failure leaves one WARNING health event, the first success after it one INFO event; nothing
per request.

Why not a library: `limits`/`slowapi` count a fixed or moving window per key but cannot charge N at once
atomically nor tell the exact wait, and would add a second Redis client next to the one we already own.
"""

from __future__ import annotations

import hashlib
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shared.core.redis_import import aioredis
from shared.core.redis_link import RedisLink, Script
from shared.core.transitions import Transitions

log = logging.getLogger(__name__)

WINDOW_MS = 60_000

_CHARGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count + n <= limit then
  for i = 1, n, 500 do
    local args = {}
    for j = i, math.min(n, i + 499) do
      args[#args + 1] = now
      args[#args + 1] = ARGV[4] .. ':' .. j
    end
    redis.call('ZADD', KEYS[1], unpack(args))
  end
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
if n > limit then
  return {0, window}
end
local oldest = redis.call('ZRANGE', KEYS[1], count + n - limit - 1, count + n - limit - 1, 'WITHSCORES')
return {0, math.max(1, tonumber(oldest[2]) + window - now)}
"""


@dataclass(frozen=True, slots=True)
class Charge:
    """The outcome of one `charge`: allowed or not, the wait in whole seconds when not, and what to refund."""

    allowed: bool
    retry_after_s: int = 0
    key: str = ""
    members: tuple[str, ...] = field(default=())


class CreationQuota:
    """See the module docstring. `limit` 0 switches the quota off."""

    def __init__(self, client: aioredis.Redis, key_prefix: str, limit: int, availability: Transitions, *,
                 redis_usable: Callable[[], bool] = lambda: True,
                 on_redis_failure: Callable[[str], Awaitable[None]] | None = None,
                 link: RedisLink | None = None) -> None:
        self.limit = limit
        self.availability = availability
        self._client = client
        self._prefix = key_prefix
        # The charge runs on every creation: on the request path's multiplexed link when there is one
        # (shared/core/redis_link.py), else through redis-py.
        self._link = link
        self._charge = Script(_CHARGE)
        self._script: Any = client.register_script(_CHARGE)
        self._redis_usable = redis_usable
        self._on_redis_failure = on_redis_failure  # the breaker: the rest of the request then skips Redis

    def key(self, subject: str) -> str:
        """The caller's counter: a hash of its `sub` (which may be an address) under the queue's prefix."""
        return f"{self._prefix}:quota:create:{hashlib.sha256(subject.encode()).hexdigest()[:32]}"

    async def charge(self, subject: str, n: int = 1) -> Charge:
        """Count `n` creations for `subject` if they all fit in the window; else say how long to wait."""
        if self.limit <= 0 or n <= 0:
            return Charge(True)
        if not self._redis_usable():  # the breaker is open: do not pay a Redis timeout per request
            await self.availability.report(False, "redis_unavailable")
            return Charge(True)
        key, tag = self.key(subject), uuid.uuid4().hex
        try:
            if self._link is not None:
                allowed, wait_ms = await self._link.evalsha(self._charge, [key], [self.limit, WINDOW_MS, n, tag])
            else:
                allowed, wait_ms = await self._script(keys=[key], args=[self.limit, WINDOW_MS, n, tag])
        except Exception as exc:
            reason = f"redis_unavailable: {type(exc).__name__}"
            await self.availability.report(False, reason)
            if self._on_redis_failure is not None:
                await self._on_redis_failure(reason)
            return Charge(True)
        await self.availability.report(True, "redis_available")
        if int(allowed) == 1:
            return Charge(True, key=key, members=tuple(f"{tag}:{i}" for i in range(1, n + 1)))
        return Charge(False, retry_after_s=max(1, math.ceil(int(wait_ms) / 1000)))

    async def refund(self, charge: Charge) -> None:
        """Give back a charge whose creations were not accepted (best effort: a lost refund only makes the
        caller wait a little longer)."""
        if not charge.members:
            return
        try:
            await self._client.zrem(charge.key, *charge.members)
        except Exception as exc:
            log.warning("quota refund lost (%s)", type(exc).__name__)

