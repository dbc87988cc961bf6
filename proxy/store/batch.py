"""Automatic pipelining: the Redis commands issued in one turn of the event loop travel together.

Under load, many requests reach the store at once, each with a command or two. redis-py spends
most of a round trip's CPU on its own machinery (connection checkout, retry wrapper, one socket
write per call), not on the command, so one pipeline of twenty commands costs little more than
one command. Each caller still awaits its own reply: the batch is invisible to it, and a
failing command fails only its caller (a broken connection fails the whole batch).

On a plain-TCP standalone server the batches go over `resp.Link`, which skips redis-py's
machinery altogether; elsewhere (TLS, unix socket, Cluster) they are redis-py pipelines.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections import deque
from collections.abc import Iterable
from typing import Any

from redis.exceptions import NoScriptError

from proxy.store.resp import Command, Link

MAX_BATCH = 256
"""Commands per pipeline; more wait for the next one, so a burst cannot build a huge reply."""


class Batcher:
    def __init__(self, client: Any, deadline: float | None = None) -> None:
        """`deadline`: seconds after which a command still unanswered fails with TimeoutError.
        One watchdog serves every batch in flight, instead of a timer per call."""
        self._client = client
        self._link = Link.of(client)
        self._deadline = deadline
        self._pending: list[Command] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._in_flight: deque[tuple[float, list[asyncio.Future[Any]]]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None

    def send(self, *args: Any, **options: Any) -> asyncio.Future[Any]:
        """The future reply to one command, as `client.execute_command` would give it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((args, options, future))
        return future

    @property
    def link(self) -> Link | None:
        """The lean connection's factory, when the client allows one (see resp.Link.of)."""
        return self._link

    async def call(self, *args: Any, **options: Any) -> Any:
        return await self.send(*args, **options)

    async def script(self, text: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, or EVAL (which also loads it) when Redis does not know the script yet."""
        try:
            return await self.call("EVALSHA", _sha(text), len(keys), *keys, *args)
        except NoScriptError:
            return await self.call("EVAL", text, len(keys), *keys, *args)

    def _flush(self) -> None:
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        loop = asyncio.get_running_loop()
        if self._pending:
            loop.call_soon(self._flush)
        if self._deadline is not None:
            self._in_flight.append((loop.time() + self._deadline, _futures(batch)))
            if self._watchdog is None:
                self._watchdog = loop.call_later(self._deadline, self._expire)
        wire = self._link.ready if self._link is not None else None
        if wire is not None:  # the common case: written now, no task
            try:
                wire.write(batch)
            except Exception as exc:  # a command that cannot be packed, say
                _fail(_futures(batch), exc)
            return
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[Command]) -> None:
        if self._link is not None:
            try:
                (await self._link.open()).write(batch)
            except Exception as exc:  # no connection: every caller learns it
                _fail(_futures(batch), exc)
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for args, options, _ in batch:
                    pipe.execute_command(*args, **options)
                replies = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for _, _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # the connection failed: every caller learns it
            _fail(_futures(batch), exc)
            return
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller gave up (the store deadline)
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def _expire(self) -> None:
        """Fail the commands past their deadline; wake again when the next batch is due."""
        self._watchdog = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._in_flight:
            due, futures = self._in_flight[0]
            if due > now and not all(f.done() for f in futures):
                self._watchdog = loop.call_at(due, self._expire)
                return
            self._in_flight.popleft()
            late = [f for f in futures if not f.done()]
            if late:
                _fail(late, TimeoutError(f"no reply from Redis within {self._deadline:g}s"))

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._link is not None:
            await self._link.close()


def _fail(futures: Iterable[asyncio.Future[Any]], exc: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)


def _futures(batch: list[Command]) -> list[asyncio.Future[Any]]:
    return [future for _, _, future in batch]


@functools.cache
def _sha(script: str) -> str:
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
