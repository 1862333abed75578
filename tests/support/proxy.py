"""A small asyncio TCP proxy for fault tests: pass, black-hole (accept, never answer) or refuse."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

Mode = Literal["pass", "blackhole", "refuse"]


class FaultProxy:
    """Listens on 127.0.0.1:<free port> and forwards to `target`; `mode` can be changed at any time.

    Changing the mode closes every open connection, as a network fault would.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.port = 0
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

    def set_mode(self, mode: Mode) -> None:
        """Switch behaviour and cut the connections that exist."""
        self.mode = mode
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.close()
            return
        self._writers.add(writer)
        if self.mode == "blackhole":
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while await reader.read(65536):
                    pass
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError, OSError):
                while data := await src.read(65536):
                    if self.mode != "pass":
                        break
                    dst.write(data)
                    await dst.drain()
            dst.close()

        tasks = [asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))]
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
