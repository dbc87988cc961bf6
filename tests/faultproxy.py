"""A small fault-injecting TCP proxy for tests: 127.0.0.1:<port> -> a target, faults at run time.

Modes, switchable while connections are open:

- `pass`: forward bytes both ways.
- `delay`: hold every chunk `delay_ms` before forwarding it (both directions, in order).
- `blackhole`: accept and read, never forward and never answer. A connection that has swallowed
  bytes stays a black hole until it closes, so no peer ever sees a byte stream with a gap in it.
- `cut`: reset every open connection (RST, on both sides) and reset new ones as soon as they are
  accepted; the listener stays bound, so leaving `cut` heals the port at once.

It runs its own asyncio loop in a daemon thread, so synchronous tests drive it directly:

    with FaultProxy(target_port) as faults:
        ... point a client at faults.port ...
        faults.set_mode("delay", delay_ms=2000)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any

_CHUNK = 65536
_CONNECT_TIMEOUT = 2.0
_CONTROL_TIMEOUT = 5.0


class Mode(StrEnum):
    PASS = "pass"
    DELAY = "delay"
    BLACKHOLE = "blackhole"
    CUT = "cut"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN: SO_LINGER 0, then abort."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    """One client connection and its connection to the target."""

    client: asyncio.StreamWriter
    target: asyncio.StreamWriter | None = None
    swallowing: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def reset(self) -> None:
        for writer in (self.client, self.target):
            if writer is not None:
                _reset(writer)


class FaultProxy:
    """Listens on 127.0.0.1 (`port`, free by default) and forwards to target_host:target_port."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int = 0) -> None:
        self._target = (target_host, target_port)
        self._requested_port = port
        self._mode = Mode.PASS
        self._delay = 0.0
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0

    # --- control, from any thread --------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._run(self._listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._run(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=_CONTROL_TIMEOUT)
            if not self._thread.is_alive():
                self._loop.close()

    def set_mode(self, mode: Mode | str, delay_ms: int = 0) -> None:
        """Switch the fault; returns once open connections have been dealt with (cut)."""
        self._run(self._switch(Mode(mode), delay_ms / 1000))

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(_CONTROL_TIMEOUT)

    # --- on the loop ---------------------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self._requested_port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _switch(self, mode: Mode, delay: float) -> None:
        self._mode, self._delay = mode, delay
        if mode is Mode.CUT:
            for link in list(self._links):
                self._drop(link)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            self._drop(link)
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await self._server.wait_closed()

    def _cutting(self) -> bool:
        return self._mode is Mode.CUT

    def _drop(self, link: _Link) -> None:
        link.reset()
        for task in link.tasks:
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._cutting():
            _reset(writer)
            return
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        link = _Link(client=writer)
        self._links.add(link)
        try:
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT):
                    target_reader, link.target = await asyncio.open_connection(*self._target)
            except (OSError, TimeoutError):
                link.reset()
                return
            if self._cutting():  # switched while we were connecting
                link.reset()
                return
            link.tasks = [
                asyncio.create_task(self._pump(link, reader, link.target)),
                asyncio.create_task(self._pump(link, target_reader, writer)),
            ]
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in link.tasks:
                task.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self._links.discard(link)
            self._handlers.discard(handler)
            for side in (link.client, link.target):
                if side is not None:
                    side.close()

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Copy one direction until EOF or an error; the mode is read again for every chunk."""
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    return
                if self._mode is Mode.DELAY and not link.swallowing:
                    await asyncio.sleep(self._delay)
                if self._mode is Mode.BLACKHOLE or link.swallowing:
                    link.swallowing = True
                    continue
                writer.write(data)
                await writer.drain()
