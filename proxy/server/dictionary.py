"""The store's zstd dictionary, shared by every process that uses the store.

A process adopts the store's dictionary when it starts. Without one, its codec keeps the payloads
of the first entries it writes (`--compression-dictionary`), trains a dictionary from them off the
event loop, and offers it to the store: the first offer wins, and every process then compresses
with the winner. An entry naming a dictionary this process does not hold reads as a miss, and
makes it fetch the store's (at most once a second), so replicas started earlier catch up.

A store can lose the dictionary while replicas run (see `keep`): the entries they go on writing
name it, and a replica started then could not read them. So each round of `keep` offers the
dictionary in use again, as the secret is: an emptied store gets it back, and a replica that
finds another adopts it (reading its own older entries still, see Codec.use).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import zstandard

from proxy.core.codec import Codec, train
from proxy.store.base import Store, StoreError

log = logging.getLogger("proxy.store")

FETCH_INTERVAL = 1.0
"""Seconds between fetches prompted by entries naming an unknown dictionary."""


class Dictionaries:
    def __init__(
        self,
        store: Store,
        codec: Codec,
        samples: int,
        clock: Callable[[], float],
        timeout: float | None = None,
    ) -> None:
        """`timeout`: seconds each store call may take (the store's breaker does not bound
        these calls: none is on a request's path)."""
        self._store = store
        self._timeout = timeout
        self._codec = codec
        self._samples = samples  # entries to train from, again after a failed attempt
        self._clock = clock
        self._task: asyncio.Task[Any] | None = None
        self._fetched_at = -FETCH_INTERVAL
        self._held: bytes | None = None  # the store's dictionary as last adopted, to offer again
        self._refused: bytes | None = None
        self._failed = False

    async def settle(self) -> None:
        """Adopt the store's dictionary, if it has one; a failing store leaves it for later."""
        await self._adopt(None)

    async def keep(self) -> None:
        """Offer the dictionary in use again; adopt the store's if it holds another. Unlike the
        secret it weighs kilobytes, sent and read back once a round: nothing next to answers."""
        if self._held is not None:
            await self._adopt(self._held)

    def written(self) -> None:
        """After a write: train once the codec has kept enough payloads."""
        if self._codec.samples_ready and self._task is None:
            samples = self._codec.take_samples()
            self._start(self._train(samples))

    def unknown(self) -> None:
        """An entry named a dictionary this process does not hold: fetch the store's."""
        now = self._clock()
        if self._task is None and now - self._fetched_at >= FETCH_INTERVAL:
            self._fetched_at = now
            self._start(self._adopt(None))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _start(self, work: Coroutine[Any, Any, Any]) -> None:
        self._task = asyncio.ensure_future(work)
        self._task.add_done_callback(self._done)

    def _done(self, _: asyncio.Task[Any]) -> None:
        self._task = None

    async def _train(self, samples: list[bytes]) -> None:
        """Training takes tens of milliseconds of CPU: in a thread (zstd lets go of the GIL), so
        the loop keeps serving. Without a dictionary after all, the next answers are kept to try
        again."""
        try:
            data = await asyncio.to_thread(train, samples)
        except zstandard.ZstdError as exc:  # too few or too alike to learn from
            log.info("no compression dictionary trained", extra={"error": str(exc)})
            data = None
        if data is None or not await self._adopt(data):
            self._codec.collect(self._samples)

    async def _adopt(self, candidate: bytes | None) -> bool:
        """Take the store's dictionary (offering `candidate`); False if none could be had."""
        try:
            async with asyncio.timeout(self._timeout):
                data = await self._store.dictionary(candidate)
        except (StoreError, TimeoutError) as exc:
            if not self._failed:  # once until it answers: rounds go on while the store is down
                cause = str(exc) or f"no answer within {self._timeout:g}s"
                log.warning("compression dictionary not shared", extra={"error": cause})
            self._failed = True
            return False
        self._failed = False
        if data is None:
            return False
        if data == self._held:
            return True
        if data == self._refused:
            return False
        try:  # another one than in use (known or not): new entries use it
            number = self._codec.use(data)
        except zstandard.ZstdError:
            log.warning("the store's compression dictionary is not one")
            self._refused = data  # said once, though each round finds it again
            return False
        log.info("compression dictionary in use", extra={"dictionary": f"{number:08x}"})
        self._held = data
        return True
