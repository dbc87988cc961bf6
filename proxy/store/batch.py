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
from typing import Any

from redis.exceptions import NoScriptError

from proxy.store.resp import Command, Link

MAX_BATCH = 256
"""Commands per pipeline; more wait for the next one, so a burst cannot build a huge reply."""


class Batcher:
    def __init__(self, client: Any) -> None:
        self._client = client
        self._link = Link.of(client)
        self._pending: list[Command] = []
        self._sending: set[asyncio.Task[None]] = set()

    def send(self, *args: Any, **options: Any) -> asyncio.Future[Any]:
        """The future reply to one command, as `client.execute_command` would give it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((args, options, future))
        return future

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
        if self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        wire = self._link.ready if self._link is not None else None
        if wire is not None:  # the common case: written now, no task
            try:
                wire.write(batch)
            except Exception as exc:  # a command that cannot be packed, say
                _fail(batch, exc)
            return
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[Command]) -> None:
        if self._link is not None:
            try:
                (await self._link.open()).write(batch)
            except Exception as exc:  # no connection: every caller learns it
                _fail(batch, exc)
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
            _fail(batch, exc)
            return
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller gave up (the store deadline)
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def close(self) -> None:
        if self._link is not None:
            await self._link.close()


def _fail(batch: list[Command], exc: Exception) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(exc)


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
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # retrieved: asyncio need not log it
        raise
