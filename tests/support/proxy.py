"""A small asyncio TCP proxy for fault tests.

Modes: `pass`; `delay` (forward both ways after `delay_s`); `blackhole` (accept, read, never answer);
`drop_replies` (forward the client's commands to the server, throw the server's replies away: the command
ran, the client never learns it); `refuse` (close at once); `reset` (close with a TCP RST).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Literal

Mode = Literal["pass", "delay", "blackhole", "drop_replies", "refuse", "reset"]


class FaultProxy:
    """Listens on 127.0.0.1:<free port> and forwards to `target`; `set_mode` changes behaviour at any time.

    Changing the mode cuts every open connection, as a network fault would.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.delay_s = 0.0
        self.port = 0
        self.bytes_from_clients = 0  # what clients sent, forwarded or not: a request reached the proxy
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FaultProxy:
        """Start listening."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        """redis:// URL through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    def set_mode(self, mode: Mode, delay_s: float = 0.0) -> None:
        """Switch behaviour. Open connections follow at once: `refuse`/`reset` cut them, `blackhole` and
        `drop_replies` make them hang (as a stopped or partitioned server would), `delay` slows them."""
        self.mode = mode
        self.delay_s = delay_s
        if mode in ("refuse", "reset"):
            for writer in list(self._writers):
                _reset(writer)
            self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self.mode  # how a new connection starts; an open one follows later changes
        if mode == "refuse":
            writer.close()
            return
        if mode == "reset":
            _reset(writer)
            return
        self._writers.add(writer)
        if mode == "blackhole":
            with contextlib.suppress(ConnectionError, asyncio.CancelledError, OSError):
                while data := await reader.read(65536):
                    self.bytes_from_clients += len(data)
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError, OSError):
                while data := await src.read(65536):
                    if not replies:
                        self.bytes_from_clients += len(data)
                    current = self.mode
                    if current in ("refuse", "reset"):
                        break
                    if current == "blackhole" or (replies and current == "drop_replies"):
                        continue
                    if current == "delay":
                        await asyncio.sleep(self.delay_s)
                    dst.write(data)
                    await dst.drain()
            dst.close()

        tasks = [asyncio.create_task(pipe(reader, up_writer, False)),
                 asyncio.create_task(pipe(up_reader, writer, True))]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)

    async def stop(self) -> None:
        """Close everything."""
        self.set_mode("refuse")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0) rather than FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
