"""The composition root: builds the adapters once per process, on first use, and closes them.

Functions call `await get_deps()`; tests build their own with `open_deps(settings)` (and set them as the
process's from a fixture).
Nothing here runs at import.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from shared.core import db
from shared.core.breaker import CircuitBreaker
from shared.core.health import Level, record_detached
from shared.core.redis_link import RedisLink
from shared.core.sessions import SessionRules
from shared.core.settings import Settings, get_settings
from shared.core.transitions import Transitions
from shared.creation.email_rate import EmailRate
from shared.creation.mailer import Mailer
from shared.creation.queueing import JobQueue, request_path_client
from shared.creation.quota import CreationQuota
from shared.creation.traffic import ModeCache

log = logging.getLogger(__name__)


@dataclass
class Deps:
    """Everything a function needs, made once per instance."""

    settings: Settings
    pool: AsyncConnectionPool
    queue: JobQueue
    breaker: CircuitBreaker
    mode_cache: ModeCache
    sessions: SessionRules
    mailer: Mailer
    source: str

    consumers: ConsumerWatch
    quota: CreationQuota

    async def fallback_reason(self) -> str | None:
        """Why this instance must not use the queue right now (None: it may).

        Redis behind an open breaker, or no live consumer (a queued job would wait for nobody).
        """
        if self.breaker.is_open:
            return "redis_unavailable"
        if not self.settings.no_consumer_fallback:
            return None
        try:
            alive = await self.consumers.any_alive()
        except Exception as exc:
            await self.breaker.failure(f"redis_unavailable: {type(exc).__name__}")
            return "redis_unavailable"
        return None if alive else "no_consumer"

    async def aclose(self) -> None:
        """Close what this process opened."""
        await self.breaker.close()
        await self.mode_cache.aclose()
        await self.sessions.aclose()
        await self.queue.close()
        await self.pool.close()


def instance_name(settings: Settings, role: str) -> str:
    """Who wrote an event: the configured name, or role/host:pid (no "@": it would read as an address)."""
    return settings.instance_name or f"{role}/{socket.gethostname()}:{os.getpid()}"


async def open_deps(settings: Settings, *, role: str = "function", mailer: Mailer | None = None) -> Deps:
    """Build and open every adapter. The pool opens without waiting, so a down database means 503s, not
    a dead instance."""
    source = instance_name(settings, role)
    pool = db.make_pool(str(settings.database_url), min_size=settings.db_pool_min,
                        max_size=settings.db_pool_max, timeout_s=settings.db_timeout_s, name=role,
                        statement_timeout_ms=settings.db_statement_timeout_ms)
    await pool.open(wait=False)
    queue = JobQueue(request_path_client(str(settings.redis_url), settings.redis_timeout_s), settings,
                     link=RedisLink(str(settings.redis_url), settings.redis_timeout_s))

    async def probe() -> None:
        await queue.ping_ms()

    async def on_transition(opened: bool, reason: str) -> None:
        modes = ("async_queue", "sync_direct") if opened else ("sync_direct", "async_queue")
        meta: dict[str, Any] = {"from": modes[0], "to": modes[1], "reason": reason, "automatic": True,
                                "instance": source}
        await record_detached(pool, Level.SWITCH, "effective_mode_changed",
                              f"effective mode {modes[0]} -> {modes[1]} ({reason})", meta, source=source)
        if opened:
            await record_detached(pool, Level.WARNING, "queue_fallback",
                                  "Redis unavailable: creation requests are served synchronously", meta,
                                  source=source)

    async def on_consumers(alive: bool) -> None:
        meta: dict[str, Any] = {"from": "sync_direct" if alive else "async_queue",
                                "to": "async_queue" if alive else "sync_direct",
                                "reason": "consumer_back" if alive else "no_consumer", "automatic": True,
                                "instance": source}
        if not alive:
            await record_detached(pool, Level.WARNING, "no_consumer",
                                  "no live queue consumer: creation requests are served synchronously", meta,
                                  source=source)
        await record_detached(pool, Level.SWITCH, "effective_mode_changed",
                              f"effective mode {meta['from']} -> {meta['to']} ({meta['reason']})", meta,
                              source=source)

    breaker = CircuitBreaker(probe, on_transition, open_s=settings.breaker_open_s,
                             probe_interval_s=settings.breaker_probe_interval_s)

    def redis_usable() -> bool:
        return not breaker.is_open

    # Shared counters live under the queue's prefix (next to the heartbeats), keyed by hashes only.
    counters = f"{settings.queue_prefix}:{settings.queue_name}:provisioner"
    quota = CreationQuota(queue.client, counters, settings.create_quota_per_minute, Transitions(
        pool, source, "quota_unavailable", "creation quota not enforced: Redis cannot be read (failing open)",
        "quota_restored", "creation quota enforced again"), redis_usable=redis_usable,
        on_redis_failure=breaker.failure, link=queue.link)
    mailer = mailer or Mailer(settings)
    mailer.rate = EmailRate(
        queue.client, f"{counters}:email-rate", settings.email_rate_per_s, redis_usable=redis_usable,
        on_redis_failure=breaker.failure, link=queue.link,
        availability=Transitions(pool, source, "email_rate_unavailable",
                                 "welcome-email rate not enforced: Redis cannot be read (failing open)",
                                 "email_rate_restored", "welcome-email rate enforced again"),
        saturation=Transitions(pool, source, "email_rate_saturated",
                               "welcome emails wait in the outbox: the sending rate is reached",
                               "email_rate_clear", "welcome emails flow at the sending rate again"))
    return Deps(settings=settings, pool=pool, queue=queue, breaker=breaker,
                mode_cache=ModeCache(pool, settings.mode_cache_ttl_s),
                sessions=SessionRules(pool, settings.session_cache_ttl_s),
                mailer=mailer, source=source,
                consumers=ConsumerWatch(queue, settings.consumer_check_ttl_s, on_consumers), quota=quota)


class ConsumerWatch:
    """Whether any consumer is alive, read from the heartbeats at most once per `ttl_s` per instance.

    Reports transitions only: WARNING + SWITCH when the last consumer disappears, SWITCH when one is back.
    """

    def __init__(self, queue: JobQueue, ttl_s: float, on_transition: Callable[[bool], Awaitable[None]]) -> None:
        self._queue = queue
        self._ttl_s = ttl_s
        self._on_transition = on_transition
        self._alive: bool | None = None
        self._read_at = 0.0

    async def any_alive(self) -> bool:
        """True when at least one consumer's heartbeat is fresh; raises when Redis cannot be read."""
        now = time.monotonic()
        if self._alive is not None and now - self._read_at < self._ttl_s:
            return self._alive
        alive = bool(await self._queue.live_consumers(details=False))
        self._read_at = now
        previous, self._alive = self._alive, alive
        if previous is not alive and not (previous is None and alive):
            await self._on_transition(alive)
        return alive


_deps: Deps | None = None
_lock: asyncio.Lock | None = None


async def get_deps() -> Deps:
    """The process-wide dependencies, built by the first request that needs them."""
    global _deps, _lock
    if _deps is not None:
        return _deps
    if _lock is None:
        _lock = asyncio.Lock()
    async with _lock:
        if _deps is None:
            _deps = await open_deps(get_settings())
            # Start-up objects live for the whole instance: keep them out of the collector's full passes,
            # which otherwise pause a fresh instance for 40-60 ms on one unlucky request. Frozen without a
            # collection first: that collection cost the first request as much (the little import-time
            # garbage it would free is not worth it).
            gc.freeze()
            log.info("dependencies ready for %s", _deps.source)
    return _deps

