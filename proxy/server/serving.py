"""One process's listener: aiohttp's request handler behind a guard that bounds slow clients.

aiohttp closes connections that sit idle between requests (keep-alive), but it neither bounds
how long a client may take to send a request's head nor how many connections are open: a client
sending its head a byte at a time (slowloris) holds a connection for as long as it likes, and
enough of them exhaust the process's descriptors. `Guard` is a thin asyncio Protocol between
the transport and aiohttp's `RequestHandler` (made by `AppRunner.server`, the protocol factory
aiohttp's own sites use): it refuses connections beyond the cap with a 503 before aiohttp sees
them, closes a connection whose head is not complete in time, and closes one whose client
stops reading its answer (`--send-timeout`, nginx's `send_timeout`): aiohttp would wait on such
a client forever, holding the answer's unsent bytes and, for a stream, an upstream connection.

The guard reads three attributes of aiohttp's handler, the only internals used, because aiohttp
exposes no event for "a head was parsed" nor for "the connection's requests are done":
`_request_count` (heads parsed so far), `_waiter` (pending while the handler waits for the next
head, so bytes arriving then start one) and `_task_handler` (the task serving the connection,
which ends after the request in progress, even once the client has left). A head
that arrives whole in one read, the common case, arms no timer. The handler itself is aiohttp's,
but for requests it must refuse before any route sees them (`proxy.server.refusals`). At a stop
signal the requests in flight are drained (`proxy.server.drain`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import resource
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from proxy.config import Settings
from proxy.core.policy import CacheMode
from proxy.errors import TooManyConnections
from proxy.server import bodies, websocket
from proxy.server.context import SERVICES
from proxy.server.drain import CUT_GRACE, Signals, drain
from proxy.server.preflight import check_store, check_upstream
from proxy.server.refusals import Handler, closing_answer, framed_by_version
from proxy.upstream.egress import env_proxy

log = logging.getLogger("proxy.serving")

# Descriptors kept out of the client connections' share: store, logs, refusals in flight.
RESERVED_DESCRIPTORS = 64
# A refused client may still be sending its request: read and drop it this long, so that
# closing does not reset the connection before the client has read the 503.
REFUSAL_GRACE = 1.0
MAX_REFUSING = 64
BACKLOG = 128


@dataclass(slots=True)
class Gate:
    """Open connections of this process against their cap."""

    limit: int
    header_timeout: float
    send_timeout: float
    open: int = 0
    refusing: int = 0


class Guard(asyncio.Protocol):
    """One admitted connection: aiohttp's handler, closed when a head takes too long."""

    __slots__ = (
        "_count",
        "_factory",
        "_gate",
        "_inner",
        "_stall",
        "_timer",
        "_transport",
        "_unsent",
    )

    _inner: RequestHandler

    def __init__(self, factory: Callable[[], RequestHandler], gate: Gate) -> None:
        self._factory = factory
        self._gate = gate
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._count = 0
        self._stall: asyncio.TimerHandle | None = None  # armed while the client reads nothing
        self._unsent = 0

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's does not subclass asyncio's
        gate = self._gate
        if gate.open >= gate.limit:
            transport.set_protocol(Refusal(transport, gate))
            return
        gate.open += 1
        self._transport = transport
        self._inner = self._factory()
        self._inner.connection_made(transport)
        self._arm()  # the first head is due from the connection's opening

    def data_received(self, data: bytes) -> None:
        inner = self._inner
        waiter = inner._waiter  # pending: these bytes start a new head
        inner.data_received(data)
        if self._timer is not None:
            if inner._request_count != self._count:
                self._timer.cancel()
                self._timer = None
        elif waiter is not None and not waiter.done():
            self._arm()

    def eof_received(self) -> None:
        self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection's slot is freed once its request is done, not when its client left:
        the handler goes on (to store what it asked the upstream for), holding an upstream
        connection, and a client that asks and leaves in a loop must not hold any number of
        them past the cap."""
        if self._transport is None:
            return
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        serving = self._inner._task_handler
        self._inner.connection_lost(exc)
        if serving is None or serving.done():
            self._free()
        else:
            serving.add_done_callback(self._free)

    def _free(self, _: object = None) -> None:
        self._gate.open -= 1

    def pause_writing(self) -> None:
        """The client's socket takes no more for now: it has `send_timeout` to take some."""
        self._inner.pause_writing()
        if self._transport is not None:
            self._watch(self._transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        self._inner.resume_writing()

    def _watch(self, unsent: int) -> None:
        self._unsent = unsent
        loop = asyncio.get_running_loop()
        self._stall = loop.call_at(loop.time() + self._gate.send_timeout, self._stalled)

    def _stalled(self) -> None:
        """Closed only when not one byte left in `send_timeout`, as nginx does: a client that
        reads slowly but reads keeps its connection."""
        self._stall = None
        transport = self._transport
        if transport is None:
            return
        unsent = transport.get_write_buffer_size()
        if unsent < self._unsent:
            self._watch(unsent)
            return
        log.info("client closed: it read none of its answer in time", extra={"unsent": unsent})
        transport.abort()

    def _arm(self) -> None:
        self._count = self._inner._request_count
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + self._gate.header_timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None and self._inner._request_count == self._count:
            self._transport.abort()


REFUSAL = closing_answer(
    TooManyConnections(
        "The proxy has reached its limit of open connections (--max-connections); retry later."
    )
)


class Refusal(asyncio.Protocol):
    """A connection beyond the cap: a 503, then whatever the client sends is dropped until it
    closes or REFUSAL_GRACE ends."""

    def __init__(self, transport: asyncio.Transport, gate: Gate) -> None:
        self._gate = gate
        self._timer: asyncio.TimerHandle | None = None
        transport.write(REFUSAL)
        if gate.refusing >= MAX_REFUSING or not transport.can_write_eof():
            transport.close()
            return
        gate.refusing += 1
        transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_GRACE, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # close now

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._gate.refusing -= 1


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (what nginx's worker_rlimit_nofile is set
    to by hand); return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the descriptor limit", extra={"error": str(exc)})
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_cap(configured: int | None, descriptors: int) -> int:
    """The setting, or half the descriptors left after the reserve: each client connection
    may hold an upstream connection too."""
    if configured is not None:
        return configured
    return max(1, (descriptors - RESERVED_DESCRIPTORS) // 2)


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def announce(line: str) -> None:
    """One plain line on stderr besides the JSON log, for whoever started the process with
    --port 0: the port bound is known only now. Otherwise stderr stays JSON lines alone, for
    the log collectors that read it."""
    print(line, file=sys.stderr, flush=True)


STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that stop `serve` with a drain: SIGHUP too (a terminal or an ssh session that
closed), which killed the process at once, every request in flight and `--cassette` lost."""


async def serve(
    app: web.Application,
    settings: Settings,
    *,
    reuse_port: bool,
    signals: tuple[signal.Signals, ...] = STOPPING,
) -> None:
    """Serve `app` until one of `signals`, then drain (see `drain`) and close."""
    descriptors = raise_descriptor_limit()
    cap = connection_cap(settings.max_connections, descriptors)
    gate = Gate(cap, settings.header_timeout, settings.send_timeout)
    keepalive = settings.keepalive_timeout
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=keepalive,
        shutdown_timeout=CUT_GRACE,  # what is left after `drain` is cut
    )
    await runner.setup()
    await _preflight(app, settings)
    manager = runner.server
    assert manager is not None
    manager.request_handler = framed_by_version(manager.request_handler)
    loop = asyncio.get_running_loop()
    # access_log=None turns aiohttp's access log off, as AppRunner's does; its annotation
    # names only a Logger.
    factory = functools.partial(
        Handler,
        manager,
        loop=loop,
        access_log=None,  # type: ignore[arg-type]
        keepalive_timeout=keepalive,
        **bodies.HANDLER_ARGS,
    )
    told = Signals()
    for sig in signals:
        loop.add_signal_handler(sig, told.received)
    try:
        server = await loop.create_server(
            lambda: Guard(factory, gate),
            settings.host,
            settings.port,
            reuse_port=reuse_port,
            backlog=BACKLOG,
        )
        _listening(settings, server.sockets[0].getsockname()[1], gate, descriptors)
        await told.first.wait()
        app[SERVICES].lifecycle.stopping = True
        server.close()  # new connections are refused from now on
        await asyncio.sleep(0)  # a request that has arrived is read, not taken for idleness
        await asyncio.gather(
            websocket.close_all(app[SERVICES]),
            drain(manager, settings.shutdown_timeout, told.second),
        )
    finally:
        await runner.cleanup()
    log.info("stopped", extra={"pid": os.getpid()})


async def _preflight(app: web.Application, settings: Settings) -> None:
    """Name a store or an upstream that will fail every request now, at start, where the
    operator looks, rather than in the first client's error (replay never calls upstream)."""
    await check_store(app[SERVICES].store, settings.store)
    if settings.cache_mode is not CacheMode.REPLAY:
        proxied = env_proxy(settings.upstream, os.environ) is not None
        await check_upstream(app[SERVICES].upstream, settings.upstream, proxied=proxied)


def _listening(settings: Settings, port: int, gate: Gate, descriptors: int) -> None:
    if settings.port == 0:
        announce(f"repro-proxy: listening on {url(settings.host, port)}")
    log.info(
        "listening",
        extra={
            "host": settings.host,
            "port": port,
            "url": url(settings.host, port),
            "pid": os.getpid(),
            "max_connections": gate.limit,
            "descriptors": descriptors,
        },
    )
