"""One proxy for a test session, served from a thread of the test process on a free port.

In process rather than a child process: the session reads the store at its end (the answers to
write to the cassette) and learns of every cache miss as it happens, without a protocol between
two processes. The proxy has its own event loop in its own thread, so it serves tests whatever
loop (or none) they run.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Generic, TypeVar

from aiohttp import web

from proxy.config import Settings
from proxy.core.call import Call
from proxy.core.policy import CacheMode
from proxy.server.app import create_app
from proxy.server.context import SERVICES, Watch
from proxy.store import cassette
from proxy.store.base import Selector
from proxy.store.retired import Retired
from proxy.testing.peers import own_user_only

T = TypeVar("T")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 1.0  # for requests still open when the session ends


class ProxyFailed(RuntimeError):
    """The session's proxy could not start, or stopped."""


class Told(Generic[T]):
    """What the proxy's thread tells the test's, in order, each taken once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[T] = []

    def tell(self, item: T) -> None:
        with self._lock:
            self._items.append(item)

    def take(self) -> list[T]:
        """What was told since the last call."""
        with self._lock:
            taken, self._items = self._items, []
        return taken


class LocalProxy:
    def __init__(self, settings: Settings, recorded: Sequence[cassette.Loaded]) -> None:
        self._settings = settings
        self._recorded = recorded
        # What the proxy's thread tells the session (`Watch`), each taken once by the test's.
        self.misses = Told[Call]()  # refused as cache misses
        self.absent = Told[str]()  # requests by id that found nothing (`METHOD /path`)
        self.unreplayable = Told[str]()  # requests no replay answers (`METHOD /path`)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="repro-proxy", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        # A recording session writes the answers the upstream deleted too (`Retired`).
        records = settings.cache_mode is CacheMode.READWRITE
        self._retired = Retired() if records else None
        self.port = 0
        self.lines: list[bytes] = []
        self.left_out: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> str:
        """Serve; return the base URL (with /v1) once the proxy answers."""
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise ProxyFailed(f"the proxy did not start within {START_TIMEOUT:g} s")
        if self._error is not None:
            raise ProxyFailed(f"the proxy did not start: {self._error}") from self._error
        return self.url

    def stop(self) -> list[bytes]:
        """Stop serving; return the cassette lines of every answer the store holds, and of
        those a recording session kept after the upstream deleted them."""
        if self._loop is not None and self._stop is not None and self.alive:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STOP_TIMEOUT)
        if self._error is not None:
            raise ProxyFailed(f"the proxy failed: {self._error}") from self._error
        return self.lines

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the session by start() or stop()
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        watch = Watch(self.misses.tell, self.absent.tell, self.unreplayable.tell)
        app = create_app(self._settings, watch=watch, retired=self._retired)
        app.middlewares.insert(0, own_user_only(lambda: self.port))
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        try:
            services = app[SERVICES]
            store, codec = services.store, services.codec
            await cassette.load(store, list(self._recorded), codec)
            services.recorded.update(cassette.index_keys(self._recorded))
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site.port
            self._ready.set()
            await self._stop.wait()
            skipped = cassette.Skipped()
            every = cassette.lines(store, Selector(), codec, skipped, self._retired)
            self.lines = [line async for line in every]
            self.left_out = skipped.refused
        finally:
            await runner.cleanup()
