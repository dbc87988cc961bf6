"""Automatic pipelining: the Redis commands issued while a batch is on its way travel together.

Under load, many requests reach the store at once, each with a command or two. redis-py spends
most of a round trip's CPU on its own machinery (connection checkout, retry wrapper, packing and
parsing), not on the command, and every round trip costs a write and a read on the socket, so one
pipeline of twenty commands costs little more than one command. Each caller still awaits its own
reply: the batch is invisible to it, and a failing command fails only its caller (a broken
connection fails the whole batch).

One batch is on its way at a time, as Nagle's algorithm keeps one small segment in flight: an
idle store gets each command at the end of the loop turn that issued it, a busy one gets, with
each reply, the next batch of everything issued meanwhile. Allowing several batches in flight
sent smaller ones, each paying its own write, read and wake-up: more CPU per request on the miss
workload of bench/bench.py, for no gain in throughput.

On a standalone server a batch goes down one connection of the client's own class and options
(TCP, TLS or a unix socket, credentials, database, protocol), opened once and kept: packed by
hiredis (redis-py's asyncio connection packs each command in Python), written
with redis-py's public `send_packed_command` and read back with `read_response`, with its
response callbacks, so replies are what `execute_command` gives. Checking a connection out of
redis-py's pool and its pipeline machinery cost more CPU than the commands of a typical batch.
The client's `socket_timeout` bounds a whole batch rather than each reply. On Redis Cluster a
batch is a redis-py cluster pipeline without a transaction, which routes each command to its node.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections import deque
from collections.abc import Iterable
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

MAX_BATCH = 256
"""Commands per pipeline; more wait for the next one, so a burst cannot build a huge reply."""

Command = tuple[tuple[Any, ...], "asyncio.Future[Any]"]
"""(arguments, the caller's future), as the batcher queues them."""


class Batcher:
    def __init__(self, client: Any, deadline: float | None = None) -> None:
        """`client`: a redis-py asyncio Redis or RedisCluster. `deadline`: seconds after which a
        command still unanswered fails with TimeoutError, counted from when it was issued. One
        watchdog serves every command, instead of a timer per call."""
        self._client = client
        self._connection, timeout = _untimed(client)
        bounds = [bound for bound in (deadline, timeout) if bound is not None]
        # A batch whose callers have all given up is cut off: the next one must not wait for it.
        self._cutoff = min(bounds, default=None)
        self._deadline = deadline
        self._tick: list[Command] | None = None
        self._pending: deque[list[Command]] = deque()
        self._taken = 0  # commands of the first pending tick already sent
        self._sending: asyncio.Task[None] | None = None  # the batch on its way
        self._in_flight: deque[tuple[float, list[Command]]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None

    def send(self, *args: Any) -> asyncio.Future[Any]:
        """The future reply to one command, as `client.execute_command` would give it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        tick = self._tick
        if tick is None:
            tick = self._tick = self._begin_tick(loop)
        tick.append((args, future))
        return future

    def _begin_tick(self, loop: asyncio.AbstractEventLoop) -> list[Command]:
        """The commands of this turn of the loop: queued together, under one deadline."""
        tick: list[Command] = []
        self._pending.append(tick)
        loop.call_soon(self._end_tick)
        if self._deadline is not None:
            self._in_flight.append((loop.time() + self._deadline, tick))
            if self._watchdog is None:
                self._watchdog = loop.call_later(self._deadline, self._expire)
        return tick

    def _end_tick(self) -> None:
        self._tick = None
        self._flush()

    async def call(self, *args: Any) -> Any:
        return await self.send(*args)

    async def script(self, text: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, or EVAL (which also loads it) when Redis does not know the script yet."""
        try:
            return await self.call("EVALSHA", sha(text), len(keys), *keys, *args)
        except NoScriptError:
            return await self.call("EVAL", text, len(keys), *keys, *args)

    def script_sent(self, text: str, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """As `script`, with EVALSHA queued now, ahead of what is sent after it (EVAL, when
        Redis does not know the script, goes in a later batch)."""
        sent = self.send("EVALSHA", sha(text), len(keys), *keys, *args)
        return asyncio.ensure_future(self._loaded(sent, text, keys, args))

    async def _loaded(
        self, sent: asyncio.Future[Any], text: str, keys: list[str], args: list[Any]
    ) -> Any:
        try:
            return await sent
        except NoScriptError:
            return await self.call("EVAL", text, len(keys), *keys, *args)

    def _flush(self) -> None:
        """Send the ticks that ended, unless a batch is on its way: its end sends them."""
        if self._ready() and self._sending is None:
            self._sending = asyncio.ensure_future(self._send(self._next_batch()))
            self._sending.add_done_callback(self._sent)

    def _ready(self) -> bool:
        return bool(self._pending) and self._pending[0] is not self._tick

    def _next_batch(self) -> list[Command]:
        """Ended ticks, up to MAX_BATCH commands; a larger tick goes in slices."""
        batch: list[Command] = []
        while self._ready() and len(batch) < MAX_BATCH:
            tick = self._pending[0]
            taken = tick[self._taken : self._taken + MAX_BATCH - len(batch)]
            batch += taken
            self._taken += len(taken)
            if self._taken == len(tick):
                self._pending.popleft()
                self._taken = 0
        return batch

    def _sent(self, _: asyncio.Task[None]) -> None:
        self._sending = None
        self._flush()

    async def _send(self, batch: list[Command]) -> None:
        try:
            async with asyncio.timeout(self._cutoff):
                if self._connection is None:
                    replies = await self._pipelined(batch)
                else:
                    replies = await self._direct(self._connection, batch)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # the connection failed: every caller learns it
            _fail(_futures(batch), exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller gave up (the store deadline)
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipelined(self, batch: list[Command]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for args, _ in batch:
                pipe.execute_command(*args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            return replies

    async def _direct(self, connection: AbstractConnection, batch: list[Command]) -> list[Any]:
        """The batch down the batcher's own connection; an error reply is its command's alone.
        Anything else (a broken or cut-off connection) closes it, and the next batch opens it
        again."""
        try:
            await _ready(connection)
            packed = b"".join([hiredis.pack_command(args) for args, _ in batch])
            await connection.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            for args, _ in batch:
                try:
                    reply = await connection.read_response()
                except ResponseError as exc:
                    replies.append(exc)
                    continue
                shape = self._client.response_callbacks.get(args[0])
                replies.append(reply if shape is None else shape(reply))
            return replies
        except BaseException:
            await connection.disconnect(nowait=True)
            raise

    def _expire(self) -> None:
        """Fail the commands past their deadline; wake again when the next tick is due."""
        self._watchdog = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._in_flight:
            due, tick = self._in_flight[0]
            if due > now and not all(future.done() for _, future in tick):
                self._watchdog = loop.call_at(due, self._expire)
                return
            self._in_flight.popleft()
            late = [future for _, future in tick if not future.done()]
            if late:
                _fail(late, TimeoutError(f"no reply from Redis within {self._deadline:g}s"))

    async def close(self) -> None:
        """Stop the watchdog and the batch on its way: its callers get cancelled."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._sending is not None:
            self._sending.cancel()
            await asyncio.gather(self._sending, return_exceptions=True)
        if self._connection is not None:
            await self._connection.disconnect()


async def _ready(connection: AbstractConnection) -> None:
    """Connected, and not closed by the server meanwhile (its idle `timeout`, a restart): the
    check redis-py's pool makes before it hands a connection out."""
    await connection.connect()  # type: ignore[no-untyped-call]
    try:
        stale = await connection.can_read_destructive()  # type: ignore[no-untyped-call]
    except (RedisConnectionError, RedisTimeoutError, OSError):
        stale = True
    if stale:
        await connection.disconnect()
        await connection.connect()  # type: ignore[no-untyped-call]


def _untimed(client: Any) -> tuple[AbstractConnection | None, float | None]:
    """For a standalone client, a connection of its class and options that times no single
    reply, and the seconds a whole batch may take instead (the client's `socket_timeout`):
    redis-py arms a timer per reply, which costs more than the reply. None for a cluster."""
    if not isinstance(client, Redis):
        return None, None
    pool = client.connection_pool
    options = {**pool.connection_kwargs, "socket_timeout": None}
    connection: AbstractConnection = pool.connection_class(**options)
    return connection, pool.connection_kwargs.get("socket_timeout")


def _fail(futures: Iterable[asyncio.Future[Any]], exc: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)


def _futures(batch: list[Command]) -> list[asyncio.Future[Any]]:
    return [future for _, future in batch]


@functools.cache
def sha(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


async def replies(*futures: asyncio.Future[Any]) -> list[Any]:
    """Await several sent commands; cheaper than asyncio.gather, which makes a task of each.

    When one fails (or the wait is cancelled), the others are dropped without a trace.
    """
    try:
        return [await future for future in futures]
    except BaseException:
        for future in futures:
            dropped(future)
        raise


def dropped(future: asyncio.Future[Any]) -> None:
    """Forget a sent command's reply: cancelled if pending, its failure marked as seen."""
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()  # retrieved: asyncio need not log it
