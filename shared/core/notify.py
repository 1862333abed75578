"""A per-instance LISTEN connection that tells a cache its copy is stale (PostgreSQL LISTEN/NOTIFY).

One connection of its own (not one of the pool's request connections), opened by a background task the first
time the cache is read, so no request waits for it. A notification marks the cache stale; a request also looks
at the listening socket itself (a zero-timeout `select()`, no round trip), so a notification that has arrived
but not been handled yet (Cloud Run throttles the CPU between requests) still counts. When the connection is
lost the cache is marked stale, a WARNING log line says so and the task reconnects with backoff; the owner's
TTL is the bound meanwhile. Used by the kill switch's `ModeCache` and by the ended sessions' `SessionRules`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from shared.core import db

log = logging.getLogger(__name__)


class ChannelListener:
    """Marks `stale` when PostgreSQL notifies `channel` (or the connection is lost). `name` ends the connection's
    application_name (`<pool name>-<name>`); `what` names the cache in log lines; `ttl_s` is the owner's bound."""

    RECONNECT_MAX_S = 5.0

    def __init__(self, pool: AsyncConnectionPool, channel: str, *, name: str, what: str, ttl_s: float) -> None:
        self._pool = pool
        self._channel = channel
        self._name = name
        self._what = what
        self._ttl_s = ttl_s
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.stale = True
        self.listening = False  # True while the LISTEN connection is up (tests and health views read it)

    def start(self) -> None:
        """Start the background task unless it runs (called on every read; cheap)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._listen(), name=self._name)

    def notified(self) -> bool:
        """A change was announced since `consume()`: handled by the task, or still unread in its socket."""
        if self.stale:
            return True
        conn = self._conn
        return conn is not None and not conn.closed and db.readable_now(conn) is True

    def consume(self) -> None:
        """The owner reads its source again now; a notification arriving during the read marks it stale again."""
        self.stale = False

    async def aclose(self) -> None:
        """Stop listening (the instance is closing)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._close_conn()

    async def _listen(self) -> None:
        delay = 0.2
        lost_since: float | None = None
        while True:
            try:
                conninfo = self._pool.conninfo if isinstance(self._pool.conninfo, str) else ""
                kwargs = self._pool.kwargs if isinstance(self._pool.kwargs, dict) else {}
                conn = await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, connect_timeout=kwargs.get("connect_timeout", 2),
                    application_name=f"{self._pool.name}-{self._name}")
                self._conn = conn
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                self.stale = True  # a change between the last read and this LISTEN was announced to nobody
                self.listening = True
                if lost_since is not None:
                    log.info("%s listener back after %.1f s", self._what, time.monotonic() - lost_since)
                lost_since, delay = None, 0.2
                async for _ in conn.notifies():
                    self.stale = True
                raise psycopg.OperationalError("the listening connection ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening = False
                self.stale = True
                if lost_since is None:
                    lost_since = time.monotonic()
                    log.warning("%s listener down (%s): changes are followed within %.1f s until it is back",
                                self._what, type(exc).__name__, self._ttl_s)
                await self._close_conn()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.RECONNECT_MAX_S)

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        self.listening = False
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
