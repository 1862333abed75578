"""A PostgreSQL wire-protocol proxy that counts round trips (for tests of how many a piece of work costs).

It forwards bytes both ways unchanged and reads the client's side of the protocol: after the start-up phase
(SSLRequest / GSSENCRequest, answered with one byte, and the StartupMessage: messages without a type byte) every
frontend message is a type byte and a length. A round trip is a message the client then waits on: 'Q' (simple
query: one statement or a script) or 'S' (Sync: the end of an extended-protocol Parse/Bind/Execute batch, which
is what psycopg sends for a statement with parameters). Pipelined statements each end with their own Sync, so
they count one each, as the server sees them.

Each round trip is also recorded with the statement it ran (`trips`: the text of the 'Q', of the last Parse, or
of the named prepared statement the last Bind refers to, known from its Parse on that connection), so a test can
tell a periodic poll from a job's own work.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

_NO_TYPE_CODES = {80877103, 80877104}  # SSLRequest, GSSENCRequest: the server answers with one byte


class CountingPgProxy:
    """Listens on 127.0.0.1:<free port>, forwards to `target`; `round_trips` counts 'Q' and 'S' of all clients."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.round_trips = 0
        self.statements: list[str] = []
        self.trips: list[str] = []  # one entry a round trip: the statement's first 100 characters
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> CountingPgProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def dsn(self, database_url: str) -> str:
        """`database_url` through this proxy (same user and database, TLS off: the proxy reads the bytes)."""
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(database_url)
        params.update(host="127.0.0.1", port=str(self.port), sslmode="disable", gssencmode="disable")
        return make_conninfo(**params)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        tasks = [asyncio.create_task(self._client_side(reader, up_writer)),
                 asyncio.create_task(self._pipe(up_reader, writer))]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)
            self._tasks.difference_update(tasks)

    async def _client_side(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:  # start-up: untyped messages until the StartupMessage itself
                head = await reader.readexactly(8)
                length, code = struct.unpack("!ii", head)
                body = await reader.readexactly(length - 8)
                writer.write(head + body)
                await writer.drain()
                if code not in _NO_TYPE_CODES:
                    break
            prepared: dict[bytes, str] = {}  # this connection's named statements: name -> text
            pending = ""  # the statement of the extended-protocol batch the next Sync ends
            while True:
                head = await reader.readexactly(5)
                (length,) = struct.unpack("!i", head[1:])
                body = await reader.readexactly(length - 4)
                kind = head[:1]
                if kind == b"Q":
                    text = body[:100].decode(errors="replace")
                    self.statements.append(text)
                    self.trips.append(text)
                    self.round_trips += 1
                elif kind == b"P":  # Parse: name \0 query \0 ...
                    name, _, rest = body.partition(b"\0")
                    pending = rest.partition(b"\0")[0].decode(errors="replace")
                    prepared[name] = pending
                    self.statements.append(body[:100].decode(errors="replace"))
                elif kind == b"B":  # Bind: portal \0 statement \0 ...
                    name = body.partition(b"\0")[2].partition(b"\0")[0]
                    pending = prepared.get(name, pending)
                elif kind == b"S":
                    self.trips.append(pending[:100])
                    self.round_trips += 1
                    pending = ""
                writer.write(head + body)
                await writer.drain()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
