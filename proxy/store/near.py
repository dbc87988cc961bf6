"""An in-process near-cache in front of Redis, kept coherent by Redis pub/sub.

A stored answer never changes meaning: its key names one request and its field one fingerprint.
What moves is a rewrite (no-cache, record), a purge, and each model's fingerprint state. Every
replica publishes those changes on one channel and drops what it holds when it hears them, so a
HIT can be answered from this process's memory without a round trip. Coherence rules:
- memory is used only while the subscription is confirmed; a lost subscription empties it, and
  so does one silent beyond its heartbeat (see subscription.listen), which may be lost unseen;
- a fetch that raced with an invalidation of its key, of a model's state or of everything is not
  remembered (a set of the keys changed while read, and a generation counter for the rest);
- expiry needs no message: HITs check each entry's age against the TTL themselves;
- a flush announces nothing (FLUSHALL, FLUSHDB, a failover to an empty replica): each round of
  the proxy's keep (server/keep.py) reads the store's generation mark, and memory is emptied
  when it is not the one last read, so what Redis lost is served for at most a round.
Redis Cluster has no asyncio pub/sub in redis-py, so the near-cache serves standalone Redis only.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import OrderedDict
from typing import Any

from proxy.core.fingerprints import Lineages, ModelFingerprints, Observation
from proxy.store.base import Selector, Store, StoreError, Write
from proxy.store.memory import charged
from proxy.store.redis import RedisStore
from proxy.store.redis_scan import ENTRY_CHANGED, EVERYTHING_CHANGED, MODEL_CHANGED
from proxy.store.subscription import HEARTBEAT
from proxy.store.wrapper import StoreWrapper

log = logging.getLogger("proxy.store")

RESUBSCRIBE_AFTER = 1.0


class NearCache(StoreWrapper):
    def __init__(
        self, inner: Store, bus: RedisStore, max_bytes: int, heartbeat: float = HEARTBEAT
    ) -> None:
        super().__init__(inner)
        self._bus = bus
        self._heartbeat = heartbeat
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, _Flat] = OrderedDict()
        self._size = 0
        self._states: Lineages[ModelFingerprints] = Lineages()
        # What moved while a fetch was on its way. Per key for entries: every replica's writes
        # reach every near-cache, so a global counter would leave a busy cluster remembering
        # almost nothing. Model states and purges are rare: one counter serves them.
        self._generation = 0
        self._fetching: dict[str, int] = {}  # keys with reads in flight, and how many
        self._changed: set[str] = set()  # those of them invalidated meanwhile
        self._mark: bytes | None = None  # the store's generation as last read
        self.live = False

    async def run(self) -> None:
        """Listen for invalidations for as long as the proxy runs, resubscribing after errors."""
        while True:
            try:
                await self._bus.listen(
                    self._bus.invalidations,
                    self._subscribed,
                    self._invalidate,
                    heartbeat=self._heartbeat,
                )
            except Exception as exc:  # any failure: forget everything, then try again
                self._forget(f"subscription lost: {type(exc).__name__}")
            await asyncio.sleep(RESUBSCRIBE_AFTER)

    async def keep(self) -> None:
        """Empty memory if the store is not the one last seen: what was remembered before may be
        gone. Asked first before anything is remembered; while no mark could be read, the first
        one read empties memory too. A failing store is left to the subscription's heartbeat."""
        try:
            mark = await self._bus.generation()
        except StoreError:
            return
        if mark == self._mark:
            return
        if self._mark is not None:
            log.warning("the store lost what it held: near-cache emptied")
        self._mark = mark
        self._invalidate(EVERYTHING_CHANGED)

    def _subscribed(self) -> None:
        self._forget("")
        self.live = True
        log.info("near-cache live")

    def _forget(self, why: str) -> None:
        if self.live and why:
            log.warning("near-cache off until resubscribed", extra={"reason": why})
        self.live = False
        self._generation += 1
        self._entries.clear()
        self._states.clear()
        self._size = 0

    def _invalidate(self, message: str) -> None:
        if message.startswith(ENTRY_CHANGED):
            key = message[len(ENTRY_CHANGED) :]
            if key in self._fetching:
                self._changed.add(key)
            self._drop(key)
            return
        self._generation += 1
        if message.startswith(MODEL_CHANGED):
            self._states.pop(message[len(MODEL_CHANGED) :])
        else:
            self._entries.clear()
            self._states.clear()
            self._size = 0

    def _drop(self, key: str) -> None:
        values = self._entries.pop(key, None)
        if values is not None:
            self._size -= _weight(key, values)

    def _remember(self, key: str, values: dict[str, bytes]) -> None:
        self._drop(key)
        flat = tuple(item for fp, value in values.items() for item in (sys.intern(fp), value))
        weight = _weight(key, flat)
        if weight > self._max_bytes:
            return
        self._entries[key] = flat
        self._size += weight
        while self._size > self._max_bytes:
            old_key, old = self._entries.popitem(last=False)
            self._size -= _weight(old_key, old)

    async def lookup(
        self, key: str, model: str | None
    ) -> tuple[ModelFingerprints | None, dict[str, bytes]]:
        """From memory when it holds the answer; else Redis, asked only for what memory lacks."""
        state, values = self._held(key, model)
        if values is not None:
            return state, values
        state, values, _ = await self._fetch(key, model, state, None)
        return state, values

    async def lookup_or_lock(
        self, key: str, model: str | None, token: str, ttl: float
    ) -> tuple[ModelFingerprints | None, dict[str, bytes], bool]:
        """As `lookup`; the lock is asked for only when the answer is not in memory (from
        memory, it is stored: no lock needed)."""
        state, values = self._held(key, model)
        if values is not None:
            return state, values, False
        return await self._fetch(key, model, state, (token, ttl))

    async def _fetch(
        self,
        key: str,
        model: str | None,
        held: ModelFingerprints | None,
        lock: tuple[str, float] | None,
    ) -> tuple[ModelFingerprints | None, dict[str, bytes], bool]:
        """Read `key` from Redis (taking its fill `lock` when it is empty, if given), with the
        model's state unless memory `held` it; remember what no invalidation raced with."""
        generation = self._generation
        asked = model if held is None else None
        self._fetching[key] = self._fetching.get(key, 0) + 1
        try:
            if lock is None:
                fetched, values = await self.inner.lookup(key, asked)
                locked = False
            else:
                fetched, values, locked = await self.inner.lookup_or_lock(key, asked, *lock)
            state = held if asked is None else fetched
            self._keep(generation, key, model, state, values)
        finally:
            left = self._fetching.pop(key) - 1
            if left:
                self._fetching[key] = left
            else:
                self._changed.discard(key)
        return state, values, locked

    def _held(
        self, key: str, model: str | None
    ) -> tuple[ModelFingerprints | None, dict[str, bytes] | None]:
        """What this process remembers for a lookup, while the feed is live: the model's state,
        and the values only when the state is held too (a HIT needs both). Every miss of a
        known model then reads only its entry from Redis."""
        if not self.live or model is None:
            return None, None
        state = self._states.get(model)
        if state is None:
            return None, None
        values = self._entries.get(key)
        if values is None:
            return state, None
        self._entries.move_to_end(key)
        if len(values) == 2:  # the common case: one answer
            return state, {values[0]: values[1]}
        return state, dict(zip(values[::2], values[1::2], strict=True))

    def _keep(
        self,
        generation: int,
        key: str,
        model: str | None,
        state: ModelFingerprints | None,
        values: dict[str, bytes],
    ) -> None:
        """Remember a fetch, unless an invalidation that concerns it came in while it was on its
        way: the model's state even when the key holds nothing (the next miss then reads only
        its entry), the values unless the key itself changed."""
        if not self.live or generation != self._generation or model is None or state is None:
            return
        self._states.put(model, state)
        if values and key not in self._changed:
            self._remember(key, values)

    # Writes announce themselves through Redis, in their own transaction or script (see
    # RedisStore); this process also drops its copy at once, before its own echo arrives.

    async def put(self, write: Write) -> None:
        self._invalidate(ENTRY_CHANGED + write.key)
        await self.inner.put(write)

    async def record(self, write: Write) -> Observation:
        self._invalidate(ENTRY_CHANGED + write.key)
        seen = await self.inner.record(write)
        if seen.previous != seen.current:
            self._invalidate(MODEL_CHANGED + write.model)
        return seen

    async def delete(self, key: str) -> None:
        self._invalidate(ENTRY_CHANGED + key)
        await self.inner.delete(key)

    async def purge(self, selector: Selector, dry_run: bool) -> int:
        """Everything goes, as the purge's own announcement would have it: once the purge has
        answered, no HIT of this process may serve what it removed, nor what a purge that
        failed part way may have."""
        try:
            return await self.inner.purge(selector, dry_run)
        finally:
            if not dry_run:
                self._invalidate(EVERYTHING_CHANGED)

    async def observe_fingerprint(
        self, model: str, fingerprint: str, now: float, count: int = 1, moves: bool = True
    ) -> Observation:
        """Most answers repeat the current fingerprint: the remembered state then still serves
        (only the current one's own count and last_seen moved), and every other replica's too."""
        seen = await self.inner.observe_fingerprint(model, fingerprint, now, count, moves)
        if seen.previous != seen.current:
            self._invalidate(MODEL_CHANGED + model)
        return seen


_Flat = tuple[Any, ...]
"""A key's answers as this process keeps them: each fingerprint followed by its value, one flat
tuple per key rather than a dict (a cache of small answers is then mostly their bytes)."""


def _weight(key: str, flat: _Flat) -> int:
    """Charged as the memory store charges its answers, so that `--near-cache` bounds memory."""
    return sum(charged(key, fp, value) for fp, value in zip(flat[::2], flat[1::2], strict=True))
