"""One welcome-email sending rate for the whole system (SES' sending quota, `EMAIL_RATE_PER_S`).

Every email goes through `outbox.deliver_pending` or `outbox.send_claimed`, whoever calls it (the sync path in a
request, the consumer after a job, the consumer's periodic outbox pass), and it asks this gate for a slot first
(the consumer's own claim, made by its creation statement, is given back when no slot comes in time). The gate is the
consumers' start limiter (`StartGate`, a sliding window in Redis) over a one-second window, so every sender of
every instance shares it. A sender waits at most `EMAIL_RATE_WAIT_S` for a slot; past that the email stays
in the outbox (nothing lost) for the consumer's next pass, and the saturation leaves one WARNING event.
When Redis cannot be read the gate fails open (SES' own throttling then answers, and the outbox retries),
also with one WARNING event per transition.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from shared.core.ratelimit import StartGate
from shared.core.redis_import import aioredis
from shared.core.redis_link import RedisLink
from shared.core.transitions import Transitions


class EmailRate:
    """`await rate.wait_for_slot(max_wait_s)`: True when an email may be sent now, False to leave it queued."""

    def __init__(self, client: aioredis.Redis, key: str, per_second: int, *, availability: Transitions,
                 saturation: Transitions, redis_usable: Callable[[], bool] = lambda: True,
                 on_redis_failure: Callable[[str], Awaitable[None]] | None = None,
                 link: RedisLink | None = None) -> None:
        self.per_second = per_second
        self.availability = availability
        self.saturation = saturation
        self._gate = StartGate(client, key, per_second, 1000, link=link)
        self._redis_usable = redis_usable
        self._on_redis_failure = on_redis_failure

    async def wait_for_slot(self, max_wait_s: float) -> bool:
        """Take one sending slot, waiting up to `max_wait_s`; fails open (True) when Redis cannot be read."""
        if self.per_second <= 0:
            return True
        if not self._redis_usable():
            await self.availability.report(False, "redis_unavailable")
            return True
        deadline = time.monotonic() + max_wait_s
        member = uuid.uuid4().hex
        while True:
            try:
                wait_ms, _ = await self._gate.try_acquire(member)
            except Exception as exc:
                reason = f"redis_unavailable: {type(exc).__name__}"
                await self.availability.report(False, reason)
                if self._on_redis_failure is not None:
                    await self._on_redis_failure(reason)
                return True
            await self.availability.report(True, "redis_available")
            if wait_ms == 0:
                await self.saturation.report(True, "slot_free")
                return True
            if time.monotonic() + wait_ms / 1000 > deadline:
                await self.saturation.report(False, "sending_rate_reached")
                return False
            await asyncio.sleep(wait_ms / 1000)
