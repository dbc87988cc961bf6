"""A lean pipelined connection to one Redis server, for the batches of the hot path.

redis-py spends most of a pipeline's CPU on its own machinery (pool checkout, retry wrapper,
packing and parsing each command in Python): measured on this kind of machine, about 100 us per
pipeline plus 8 us per command, where the bytes on the wire need about 25 us plus 1 us here. This
speaks RESP2 over one asyncio.Protocol: hiredis packs the commands and parses the replies, which
resolve their callers' futures in order. redis-py's own response callbacks shape each reply, so
callers get what `execute_command` would give them, error classes included.

Plain TCP only: TLS, unix sockets and Redis Cluster stay with redis-py (see `Link.of`).
A connection that fails fails every command waiting on it, and the next batch connects again; a
server that stops answering for `timeout` seconds while commands wait is cut off the same way, so
one stalled socket cannot hold every later command behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

Command = tuple[tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]
"""(arguments, redis-py options, the caller's future), as the batcher queues them."""

_PLAIN_OPTIONS = frozenset(
    {
        "host",
        "port",
        "db",
        "username",
        "password",
        "socket_timeout",
        "socket_connect_timeout",
        "retry",
        "health_check_interval",
    }
)
"""Connection settings this module honours; a client with any other one keeps redis-py's path."""


class _ReplyError(Exception):
    """What hiredis hands back for an error reply (returned, not raised)."""


def _error(message: str) -> ResponseError:
    """The class redis-py would raise for this error reply."""
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


class Wire(asyncio.Protocol):
    """One open connection: writes commands, resolves their futures as the replies arrive."""

    def __init__(self, timeout: float, callbacks: Mapping[str, Callable[..., Any]]) -> None:
        self.transport: asyncio.Transport | None = None
        self._timeout = timeout
        self._callbacks = callbacks
        self._reader = hiredis.Reader(replyError=_ReplyError)
        self._waiting: deque[tuple[asyncio.Future[Any], Callable[[Any], Any] | None]] = deque()
        self._loop = asyncio.get_running_loop()
        self._heard = 0.0
        self._watch: asyncio.TimerHandle | None = None

    @property
    def open(self) -> bool:
        return self.transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def write(self, commands: Sequence[Command]) -> None:
        """Send the commands in one write; their replies come back in the same order."""
        if self.transport is None:
            raise RedisConnectionError("Redis connection closed")
        if not self._waiting:
            self._heard = self._loop.time()
            if self._watch is None:
                self._watch = self._loop.call_later(self._timeout, self._check)
        self.transport.write(b"".join([hiredis.pack_command(args) for args, _, _ in commands]))
        self._waiting.extend(
            (future, self._shape(args, options)) for args, options, future in commands
        )

    def _shape(self, args: tuple[Any, ...], options: dict[str, Any]) -> Callable[[Any], Any] | None:
        callback = self._callbacks.get(args[0])
        if callback is None or not options:
            return callback
        return functools.partial(callback, **options)

    def data_received(self, data: bytes) -> None:
        self._heard = self._loop.time()
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                future, shape = self._waiting.popleft()
                if future.done():  # its caller gave up (the store deadline)
                    continue
                if isinstance(reply, _ReplyError):
                    future.set_exception(_error(str(reply)))
                    continue
                try:
                    future.set_result(shape(reply) if shape is not None else reply)
                except Exception as exc:  # a reply redis-py's callback cannot shape
                    future.set_exception(exc)
        except Exception as exc:  # a corrupt stream or a reply nobody asked for: start over
            self._abort(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        error = RedisConnectionError(
            f"Redis connection lost: {type(exc).__name__}" if exc else "Redis closed the connection"
        )
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def _check(self) -> None:
        """While replies are due, a silent server is cut off after `timeout` seconds."""
        self._watch = None
        if not self._waiting or self.transport is None:
            return
        silent = self._loop.time() - self._heard
        if silent >= self._timeout:
            self._abort(TimeoutError(f"no reply from Redis within {self._timeout:g}s"))
            return
        self._watch = self._loop.call_later(self._timeout - silent, self._check)

    def _abort(self, exc: Exception) -> None:
        if self.transport is not None:
            transport, self.transport = self.transport, None
            transport.abort()
        self.connection_lost(exc)


class Link:
    """The wire to one server: opened on first use, and again after it breaks."""

    def __init__(
        self,
        host: str,
        port: int,
        hello: list[tuple[Any, ...]],
        connect_timeout: float,
        timeout: float,
        callbacks: Mapping[str, Callable[..., Any]],
    ) -> None:
        self._host, self._port, self._hello = host, port, hello
        self._connect_timeout, self._timeout = connect_timeout, timeout
        self._callbacks = callbacks
        self._wire: Wire | None = None
        self._opening: asyncio.Future[Wire] | None = None

    @classmethod
    def of(cls, client: Any) -> Link | None:
        """A link for a plain-TCP standalone redis-py client; None for anything else."""
        if type(client) is not Redis:
            return None
        pool = client.connection_pool
        options = pool.connection_kwargs
        if pool.connection_class is not Connection or not options.keys() <= _PLAIN_OPTIONS:
            return None
        hello: list[tuple[Any, ...]] = []
        if options.get("password") is not None:
            user, password = options.get("username"), options["password"]
            hello.append(("AUTH", user, password) if user else ("AUTH", password))
        if options.get("db"):
            hello.append(("SELECT", options["db"]))
        return cls(
            options.get("host", "localhost"),
            int(options.get("port", 6379)),
            hello,
            options.get("socket_connect_timeout") or 5.0,
            options.get("socket_timeout") or 5.0,
            # a plain dict: redis-py's CaseInsensitiveDict upper-cases every lookup
            dict(cast(Mapping[str, Callable[..., Any]], client.response_callbacks)),
        )

    @property
    def ready(self) -> Wire | None:
        """The open wire, if there is one now."""
        wire = self._wire
        return wire if wire is not None and wire.open else None

    async def open(self) -> Wire:
        """The open wire, connecting once for every caller that asks meanwhile."""
        wire = self.ready
        if wire is not None:
            return wire
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(self._connect())
            self._opening.add_done_callback(_retrieved)
        return await asyncio.shield(self._opening)

    async def _connect(self) -> Wire:
        loop = asyncio.get_running_loop()
        wire: Wire | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, wire = await loop.create_connection(
                    lambda: Wire(self._timeout, self._callbacks), self._host, self._port
                )
                greeting: list[Command] = [(args, {}, loop.create_future()) for args in self._hello]
                if greeting:
                    wire.write(greeting)
                for _, _, future in greeting:
                    await future
        except BaseException:
            if wire is not None and wire.transport is not None:
                wire.transport.abort()
            raise
        self._wire = wire
        return wire

    async def listen(
        self, channel: str, subscribed: Callable[[], None], message: Callable[[bytes], None]
    ) -> None:
        """Deliver `channel`'s messages on a connection of their own until it fails, then raise.

        redis-py's PubSub parses every message through its whole client stack; a near-cache
        hears one per write anywhere, its own included, so this path is kept as lean as `Wire`.
        """
        loop = asyncio.get_running_loop()
        listener = _Listener(channel, subscribed, message)
        async with asyncio.timeout(self._connect_timeout):
            transport, _ = await loop.create_connection(lambda: listener, self._host, self._port)
        try:
            subscribe: tuple[Any, ...] = ("SUBSCRIBE", channel)
            commands = [*self._hello, subscribe]
            transport.write(b"".join([hiredis.pack_command(args) for args in commands]))
            await listener.lost
        finally:
            transport.close()
        raise RedisConnectionError(f"Redis subscription lost: {listener.why}")

    async def close(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
            with contextlib.suppress(BaseException):
                await self._opening
        if self._wire is not None and self._wire.transport is not None:
            self._wire.transport.close()
        self._wire = None


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A connect that failed after its callers gave up is not an unhandled error."""
    if not future.cancelled():
        future.exception()


class _Listener(asyncio.Protocol):
    """A connection in subscribe mode: messages and the subscription's confirmation."""

    def __init__(
        self, channel: str, subscribed: Callable[[], None], message: Callable[[bytes], None]
    ) -> None:
        self._channel = channel.encode()
        self._subscribed = subscribed
        self._message = message
        self._reader = hiredis.Reader(replyError=_ReplyError)
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.why = "closed by Redis"
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                if isinstance(reply, _ReplyError):  # AUTH or SUBSCRIBE refused
                    raise reply
                if not isinstance(reply, list) or len(reply) != 3 or reply[1] != self._channel:
                    continue  # the greeting's +OK replies
                if reply[0] == b"message":
                    self._message(reply[2])
                elif reply[0] == b"subscribe":
                    self._subscribed()
        except Exception as exc:
            self.why = f"{type(exc).__name__}: {exc}"
            if self._transport is not None:
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.why = type(exc).__name__
        if not self.lost.done():
            self.lost.set_result(None)
