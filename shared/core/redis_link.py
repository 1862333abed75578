"""One multiplexed Redis connection for the request path's two hot commands (the quota script, the BullMQ add).

redis-py spends about 100 us of CPU per command on this machine (a pooled connection borrowed and given back, a
retry wrapper, a timeout per read, the command packed in Python), five times what the round trip itself costs
(bench `peer_202_*`, bench/README.md). `RedisLink` is the way ioredis works for the Node peer: every concurrent
request writes its command on one connection and awaits a future; hiredis parses the replies, which Redis sends
in order, so the oldest waiting future takes the next reply. No pool, no per-command objects besides the future.

It carries scripts only (`evalsha`, loading the script with EVAL on NOSCRIPT); everything else stays on
redis-py. The URL is parsed by redis-py (`rediss://` with its TLS context, AUTH, SELECT), so both clients reach
Redis the same way. A command that does not answer within its timeout, or any connection error, closes the
connection and fails every command waiting on it (each caller then fails open or falls back, as with redis-py);
the next command connects again.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import hiredis

from shared.core.redis_import import aioredis


class RedisReplyError(Exception):
    """An error reply of Redis (e.g. NOSCRIPT, or a script's own error)."""


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(encoding="utf-8", replyError=RedisReplyError)
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.waiting:  # a reply nobody asked for: the stream is out of step
                self.fail(ConnectionError("unexpected reply from Redis"))
                return
            future = self.waiting.popleft()
            if not future.done():  # the caller may have gone (cancelled): its reply is dropped
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc or ConnectionError("Redis closed the connection"))

    def fail(self, exc: BaseException) -> None:
        """Close the connection and fail every waiting command with `exc`."""
        if self.lost is None:
            self.lost = exc
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError(f"Redis connection lost ({type(exc).__name__})"))
        if self.transport is not None:
            self.transport.abort()

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        if self.transport is None:  # never: RedisLink sends only once connected
            raise ConnectionError("the Redis link is not connected")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(packed)
        return future


class Script:
    """A Lua script sent by its SHA1 (EVALSHA), loaded with EVAL when the server does not know it."""

    def __init__(self, text: str, sha: str | None = None) -> None:
        import hashlib

        self.text = text
        self.sha = sha or hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


class RedisLink:
    """See the module docstring. Made cheaply; connects on the first command."""

    def __init__(self, url: str, timeout_s: float) -> None:
        kwargs: dict[str, Any] = dict(aioredis.connection.parse_url(url))
        connection_class = kwargs.pop("connection_class", None)
        self._host = str(kwargs.get("host", "127.0.0.1"))
        self._port = int(kwargs.get("port", 6379))
        self._db = int(kwargs.get("db", 0) or 0)
        self._username = kwargs.get("username")
        self._password = kwargs.get("password")
        self._ssl: Any = None
        if connection_class is not None and issubclass(connection_class, aioredis.SSLConnection):
            ssl_kwargs: dict[str, Any] = {k: v for k, v in kwargs.items() if k.startswith("ssl")}
            self._ssl = aioredis.SSLConnection(host=self._host, port=self._port, **ssl_kwargs).ssl_context.get()
        elif connection_class is not None and connection_class is not aioredis.Connection:
            raise ValueError(f"RedisLink supports redis:// and rediss:// URLs, not {connection_class.__name__}")
        self.timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and self._protocol.lost is None:
                return self._protocol
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(self.timeout_s):
                _, protocol = await loop.create_connection(_Protocol, self._host, self._port, ssl=self._ssl)
                try:
                    hello: list[tuple[Any, ...]] = []
                    if self._password is not None:
                        hello.append(("AUTH", self._username, self._password) if self._username
                                     else ("AUTH", self._password))
                    if self._db:
                        hello.append(("SELECT", self._db))
                    for command in hello:
                        reply = await protocol.send(hiredis.pack_command(command))
                        if isinstance(reply, RedisReplyError):
                            raise reply
                except BaseException as exc:
                    protocol.fail(exc)
                    raise
            self._protocol = protocol
            return protocol

    async def command(self, *args: Any, timeout_s: float | None = None) -> Any:
        """Send one command and return its reply; raises RedisReplyError for an error reply, ConnectionError or
        TimeoutError otherwise (the connection is then closed and every command waiting on it failed)."""
        protocol = await self._connected()
        future = protocol.send(hiredis.pack_command(args))
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                reply = await future
        except TimeoutError as exc:
            protocol.fail(exc)  # its reply may still come: the stream cannot be trusted any more
            raise
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    async def evalsha(self, script: Script, keys: list[str], args: list[Any], *,
                      timeout_s: float | None = None) -> Any:
        """Run `script` (EVALSHA; EVAL once when Redis does not know it yet)."""
        try:
            return await self.command("EVALSHA", script.sha, len(keys), *keys, *args, timeout_s=timeout_s)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.command("EVAL", script.text, len(keys), *keys, *args, timeout_s=timeout_s)

    async def aclose(self) -> None:
        """Close the connection (commands still waiting fail)."""
        if self._protocol is not None:
            self._protocol.fail(ConnectionError("closed"))
            self._protocol = None
