"""A per-instance circuit breaker in front of Redis on the request path.

Closed: requests try the queue. The first failure opens it: for at least `open_s` seconds requests go
straight to the sync path without paying a Redis timeout, while a background probe checks Redis every
`probe_interval_s`; the first successful probe after that closes it again. Only transitions are reported,
never each request, so a flapping Redis yields a bounded number of events (at most one cycle per `open_s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[None]]
Transition = Callable[[bool, str], Awaitable[None]]  # (opened, reason)


class CircuitBreaker:
    """Tracks whether Redis may be used; see the module docstring."""

    def __init__(self, probe: Probe, on_transition: Transition, *, open_s: float,
                 probe_interval_s: float) -> None:
        self._probe = probe
        self._on_transition = on_transition
        self._open_s = open_s
        self._probe_interval_s = probe_interval_s
        self._opened_at: float | None = None
        self.reason = ""
        self._task: asyncio.Task[None] | None = None

    @property
    def is_open(self) -> bool:
        """True while requests must bypass Redis."""
        return self._opened_at is not None

    async def failure(self, reason: str) -> None:
        """Report a Redis failure; opens the breaker (once) and starts probing."""
        if self._opened_at is not None:
            return
        self._opened_at = time.monotonic()
        self.reason = reason
        log.warning("circuit breaker opened: %s", reason)
        self._task = asyncio.get_running_loop().create_task(self._probe_until_healthy(),
                                                            name="redis-breaker-probe")
        await self._notify(True, reason)

    async def _notify(self, opened: bool, reason: str) -> None:
        try:
            await self._on_transition(opened, reason)
        except Exception:
            log.exception("circuit breaker transition could not be reported")

    async def _probe_until_healthy(self) -> None:
        while self._opened_at is not None:
            await asyncio.sleep(self._probe_interval_s)
            if time.monotonic() - self._opened_at < self._open_s:
                continue
            try:
                await self._probe()
            except Exception as exc:
                log.info("circuit breaker probe failed: %s", type(exc).__name__)
                continue
            self._opened_at = None
            self.reason = ""
            log.warning("circuit breaker closed: Redis answers again")
            await self._notify(False, "redis_recovered")

    async def close(self) -> None:
        """Stop probing and forget the state (process shutdown)."""
        self._opened_at = None
        self.reason = ""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
