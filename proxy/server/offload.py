"""CPU-heavy work on a request kept off the event loop, in a child process.

A thread would not do: orjson parses holding the GIL throughout, and a large body of many small
values (megabytes of one-character messages) holds it, garbage collections included, long enough
to stall every other request, since a loop in another thread of the process cannot run either.
A child process has a GIL of its own. It is started on first use, so a proxy that never sees a
large body pays nothing, and there is one: a flood of large bodies queues for it instead of
taking every core.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from proxy.core.weight import heavy

T = TypeVar("T")


WAITING = 8
"""Jobs the child takes at once, the one it runs and those waiting for it. A job is a body
parsed, an answer read, a comparison made: seconds of the child's time each at worst (16 MiB
of nested arrays, which 16 KiB of gzip inflates to, took 6), and a queue without a bound made
every other tenant's large body wait for every one before it (47 s after eight of them)."""


class Busy(Exception):
    """The child has WAITING jobs already: the caller refuses its own, or does without."""


class Offload:
    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._jobs = 0

    async def run(self, work: Callable[..., T], *args: object, wait: bool = False) -> T:
        """`work(*args)` in the child: a module-level function, its arguments and result
        picklable (plain data: bytes, dataclasses, enums). Busy past WAITING jobs, unless
        asked to `wait` (an operator's request, which no client can make)."""
        if self._jobs >= WAITING and not wait:
            raise Busy(f"{self._jobs} jobs are waiting for the child")
        self._jobs += 1
        try:
            return await self._run(work, *args)
        finally:
            self._jobs -= 1

    async def _run(self, work: Callable[..., T], *args: object) -> T:
        if self._pool is None:
            # spawn: a forked copy of a process running an event loop and threads is unsafe
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, work, *args)
        except BrokenProcessPool:  # the child died (killed, out of memory): a new one next time
            self.close()
            raise

    async def parse(self, work: Callable[..., T], data: bytes, *args: object) -> T:
        """`work(data, *args)`: at once for a light `data`, in the child for a `heavy` one
        (BrokenProcessPool if the child died, Busy if it has WAITING jobs already)."""
        if not heavy(data):
            return work(data, *args)
        return await self.run(work, data, *args)

    def close(self) -> None:
        """Stop the child, waiting for its manager thread: left to end on its own, it closed
        its wakeup pipe while the interpreter's exit hook (`concurrent.futures.process`) wrote
        to it, and a stopping proxy printed an OSError traceback now and then."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
