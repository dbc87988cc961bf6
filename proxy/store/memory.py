"""The embedded store: a byte-bounded LRU in this process, and the reference for the contract.

Everything runs on one asyncio loop and no method awaits in the middle of an update, so each
operation is atomic without locks.
"""

from __future__ import annotations

import heapq
import sys
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.core.codec import raw_size
from proxy.core.fingerprints import (
    ANSWERS_KEPT,
    BACKS_KEPT,
    FINGERPRINTS_KEPT,
    MODELS_KEPT,
    ROTATIONS_KEPT,
    ROUTED_KEPT,
    FingerprintSeen,
    ModelFingerprints,
    Observation,
    Rotation,
    least_recent,
    observed,
)
from proxy.core.routes import routed
from proxy.store.base import NO_LABELS, Selector, Usage, Write

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
ENTRY_OVERHEAD = 200
"""Bytes charged per answer on top of its value, key and fingerprint: what Python spends on
holding it (object headers, the LRU's and the tuple's slots), so that a bound bounds memory
(tests/store/test_memory_accounting.py measures it)."""

REMEMBERED = 4096
"""Names kept by `attempts` and `revoke`."""

_Held = tuple[Any, ...]
"""What a key holds: its labels, then each fingerprint followed by its value. One flat tuple per
key, not an object per answer: a cache of small answers is then mostly their bytes."""


@dataclass(slots=True)
class _Model:
    current: str
    seen: dict[str, FingerprintSeen] = field(default_factory=dict)
    rotations: deque[Rotation] = field(default_factory=lambda: deque(maxlen=ROTATIONS_KEPT))
    backs: deque[float] = field(default_factory=lambda: deque(maxlen=BACKS_KEPT))
    frozen: ModelFingerprints | None = None  # the last snapshot, until the next observation


class MemoryStore:
    """Answers per key in an LRU bounded by bytes, as stored (compressed: the bound counts what
    memory holds); fingerprint state per model, of at most `max_models` models (MODELS_KEPT)
    and apart from them `max_routed` routed lineages (ROUTED_KEPT), the least recently looked
    up or observed of each forgotten first.

    A key's answers (one per fingerprint) live and leave together, and a TTL is the key's, as in
    Redis: a write with a TTL renews the key's other answers, one without makes them all
    persist. Only a key written with a TTL has an expiry."""

    shared = False

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
        max_models: int = MODELS_KEPT,
        max_routed: int = ROUTED_KEPT,
    ) -> None:
        self._max_bytes = max_bytes
        self._max_models = max_models
        self._max_routed = max_routed
        self._clock = clock
        self._entries: OrderedDict[str, _Held] = OrderedDict()
        self._answers = 0
        self._expires: dict[str, float] = {}  # of the keys written with a TTL
        self._expiries: list[tuple[float, str]] = []  # a schedule; `_expires` is the truth
        self._size = 0
        self._expansion = 0
        self._labels = NO_LABELS  # the last labels written, shared by the answers that match
        self._models: OrderedDict[str, _Model] = OrderedDict()  # least recently used first
        self._routed: OrderedDict[str, _Model] = OrderedDict()  # routed lineages, as _models
        self._secret: bytes | None = None
        self._dictionary: bytes | None = None
        self._locks: dict[str, tuple[str, float]] = {}
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()
        self._marks: OrderedDict[str, float] = OrderedDict()  # name -> until

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    async def get(self, key: str, fingerprints: Sequence[str] | None) -> dict[str, bytes]:
        return self._get(key, fingerprints)

    def _get(self, key: str, fingerprints: Sequence[str] | None) -> dict[str, bytes]:
        self._drop_expired()
        held = self._entries.get(key)
        if held is None:
            return {}
        if len(held) == 3:  # the common case: one answer
            found = {held[1]: held[2]} if fingerprints is None or held[1] in fingerprints else {}
        else:
            found = {fp: value for fp, value in _answers(held) if _wanted(fp, fingerprints)}
        if found:
            self._entries.move_to_end(key)
        return found

    async def lookup(
        self, key: str, model: str | None
    ) -> tuple[ModelFingerprints | None, dict[str, bytes]]:
        state = None if model is None else self._state_of(model)
        return state, self._get(key, None)

    async def lookup_or_lock(
        self, key: str, model: str | None, token: str, ttl: float
    ) -> tuple[ModelFingerprints | None, dict[str, bytes], bool]:
        state, found = await self.lookup(key, model)
        return state, found, not found and await self.lock(key, token, ttl)

    async def put(self, write: Write) -> None:
        self._store(write)
        if write.unlock is not None:
            self._locks.pop(write.key, None)

    def _store(self, write: Write) -> None:
        self._drop_expired()
        key, value = write.key, write.value
        fingerprint = sys.intern(write.fingerprint)  # a handful of distinct ones, shared
        labels = write.labels
        if labels == self._labels:
            labels = self._labels
        else:
            self._labels = labels
        held = self._remove(key)  # and its expiry: a write without a TTL makes the key persist
        answers = () if held is None else _without(held, fingerprint)
        if charged(key, fingerprint, value) <= self._max_bytes:
            answers = (*answers, fingerprint, value)[-2 * ANSWERS_KEPT :]  # the oldest go first
        if not answers:
            return
        self._keep(key, (labels, *answers))
        if write.ttl > 0:
            expires = self._clock() + write.ttl
            self._expires[key] = expires
            heapq.heappush(self._expiries, (expires, key))
        self._evict()

    async def delete(self, key: str) -> None:
        self._remove(key)

    async def purge(self, selector: Selector, dry_run: bool) -> int:
        self._drop_expired()
        chosen = [
            (key, fingerprint)
            for key, held in self._entries.items()
            for fingerprint, _ in _answers(held)
            if selector.matches(held[0], fingerprint)
        ]
        if not dry_run:
            for key, fingerprint in chosen:
                self._forget(key, fingerprint)
        return len(chosen)

    async def entries(self, selector: Selector) -> AsyncIterator[tuple[str, str, bytes]]:
        self._drop_expired()
        for key, held in list(self._entries.items()):
            for fingerprint, value in _answers(held):
                if selector.matches(held[0], fingerprint):
                    yield key, fingerprint, value

    async def usage(self) -> Usage:
        self._drop_expired()
        return Usage(self._answers, self._size, self._size + self._expansion)

    async def record(self, write: Write) -> Observation:
        seen = await self.observe_fingerprint(write.model, write.fingerprint, write.now)
        await self.put(write)
        return seen

    async def observe_fingerprint(
        self, model: str, fingerprint: str, now: float, count: int = 1, moves: bool = True
    ) -> Observation:
        kept, bound = self._kept(model)
        state = kept.get(model)
        previous = state.current if state is not None else None
        if state is None:
            state = kept[model] = _Model(current=fingerprint)
            while len(kept) > bound:
                kept.popitem(last=False)
        else:
            kept.move_to_end(model)
        seen = state.seen.get(fingerprint)
        state.seen[fingerprint] = _seen_again(seen, fingerprint, now, count)
        outcome = observed(previous, fingerprint, seen is None, moves)
        if outcome.changed and previous is not None:
            state.rotations.append(Rotation(previous, fingerprint, now, outcome.back))
            if outcome.back:
                state.backs.append(now)
        state.current = outcome.current
        if seen is None and len(state.seen) > FINGERPRINTS_KEPT:
            oldest = least_recent(state.seen.values(), {state.current, fingerprint})
            if oldest is not None:
                del state.seen[oldest]
        state.frozen = None
        return outcome

    async def fingerprints(self, model: str) -> ModelFingerprints | None:
        return self._state_of(model)

    def _kept(self, model: str) -> tuple[OrderedDict[str, _Model], int]:
        """Where a lineage's state is kept, and how many that holds: routed lineages apart."""
        if routed(model):
            return self._routed, self._max_routed
        return self._models, self._max_models

    def _state_of(self, model: str) -> ModelFingerprints | None:
        """Every lookup asks: a model looked up is used, and is forgotten last."""
        kept = self._kept(model)[0]
        state = kept.get(model)
        if state is None:
            return None
        kept.move_to_end(model)
        return _snapshot(state)

    async def all_fingerprints(self) -> dict[str, ModelFingerprints]:
        kept = (*self._models.items(), *self._routed.items())
        return {model: _snapshot(state) for model, state in kept}

    async def rotations(self, model: str) -> tuple[Rotation, ...]:
        state = self._kept(model)[0].get(model)
        return () if state is None else tuple(state.rotations)

    async def secret(self, candidate: bytes) -> bytes:
        if self._secret is None:
            self._secret = candidate
        return self._secret

    async def dictionary(self, candidate: bytes | None) -> bytes | None:
        if self._dictionary is None:
            self._dictionary = candidate
        return self._dictionary

    async def lock(self, key: str, token: str, ttl: float) -> bool:
        if await self.locked(key):
            return False
        self._locks[key] = (token, self._clock() + ttl)
        return True

    async def unlock(self, key: str, token: str) -> None:
        if self._locks.get(key, ("", 0.0))[0] == token:
            del self._locks[key]

    async def locked(self, key: str) -> bool:
        held = self._locks.get(key)
        if held is not None and held[1] <= self._clock():
            del self._locks[key]
            held = None
        return held is not None

    async def attempts(
        self, name: str, now: float, window: float, keep: int, add: bool
    ) -> tuple[float, ...]:
        """Bounded: at most `keep` times per name, and `REMEMBERED` names, the stalest
        forgotten first."""
        times = self._attempts.pop(name, None) or deque(maxlen=keep)
        while times and now - times[0] >= window:
            times.popleft()
        if add:
            times.append(now)
        if times:
            self._attempts[name] = times
            while len(self._attempts) > REMEMBERED:
                self._attempts.popitem(last=False)
        return tuple(times)

    async def mark(self, name: str, ttl: float) -> None:
        """Bounded as `attempts`: only the admin token's holder marks a session (issued, or
        logged out), so the names are few."""
        self._marks.pop(name, None)
        self._marks[name] = self._clock() + ttl
        while len(self._marks) > REMEMBERED:
            self._marks.popitem(last=False)

    async def marked(self, name: str) -> bool:
        until = self._marks.get(name)
        if until is not None and until <= self._clock():
            del self._marks[name]
            until = None
        return until is not None

    async def ping(self) -> None:
        """Always answers: the store is this process."""

    async def close(self) -> None:
        """Nothing to release."""

    def _keep(self, key: str, held: _Held) -> None:
        self._entries[key] = held
        self._count(key, held, 1)

    def _remove(self, key: str) -> _Held | None:
        held = self._entries.pop(key, None)
        if held is not None:
            self._count(key, held, -1)
            self._expires.pop(key, None)
        return held

    def _forget(self, key: str, fingerprint: str) -> None:
        """One answer of a key; the others keep the key's place in the LRU and its expiry."""
        held = self._entries.get(key)
        if held is None:
            return
        rest = _without(held, fingerprint)
        if not rest:
            self._remove(key)
            return
        self._count(key, held, -1)
        self._keep(key, (held[0], *rest))  # an existing key keeps its place

    def _count(self, key: str, held: _Held, sign: int) -> None:
        """An answer counts its value and address; the key's labels count once, as long as
        they are: a namespace and a model name are the client's, new with each write if it
        likes, and may be longer than a small answer."""
        labels = held[0]
        self._size += sign * sum(map(len, labels))
        for fingerprint, value in _answers(held):
            self._answers += sign
            self._size += sign * charged(key, fingerprint, value)
            self._expansion += sign * (raw_size(value) - len(value))

    def _evict(self) -> None:
        while self._size > self._max_bytes:
            self._remove(next(iter(self._entries)))

    def _drop_expired(self) -> None:
        """Expired keys leave as soon as any call notices, so they stop counting to the bound."""
        if not self._expiries:
            return
        now = self._clock()
        while self._expiries and self._expiries[0][0] <= now:
            expires, key = heapq.heappop(self._expiries)
            if self._expires.get(key) == expires:  # else rewritten or removed since
                self._remove(key)
        if len(self._expiries) > 2 * len(self._expires) + 64:
            self._compact_expiries()

    def _compact_expiries(self) -> None:
        """Forget the schedules of rewritten and evicted keys, so they cannot pile up."""
        self._expiries = [(expires, key) for key, expires in self._expires.items()]
        heapq.heapify(self._expiries)


def _answers(held: _Held) -> Iterator[tuple[str, bytes]]:
    return zip(held[1::2], held[2::2], strict=True)


def _without(held: _Held, fingerprint: str) -> tuple[Any, ...]:
    """A key's other answers, flat as `_Held` keeps them."""
    return tuple(item for pair in _answers(held) if pair[0] != fingerprint for item in pair)


def _wanted(fingerprint: str, fingerprints: Sequence[str] | None) -> bool:
    return fingerprints is None or fingerprint in fingerprints


def charged(key: str, fingerprint: str, value: bytes) -> int:
    """What an answer held in this process counts against a bound: its value, its address,
    and ENTRY_OVERHEAD."""
    return len(value) + len(key) + len(fingerprint) + ENTRY_OVERHEAD


def _seen_again(
    seen: FingerprintSeen | None, fingerprint: str, now: float, count: int
) -> FingerprintSeen:
    """Count more answers; `last_seen` never goes back, since replicas report out of order."""
    if seen is None:
        return FingerprintSeen(fingerprint, first_seen=now, last_seen=now, count=count)
    last_seen = max(seen.last_seen, now)
    return FingerprintSeen(fingerprint, seen.first_seen, last_seen, seen.count + count)


def _snapshot(state: _Model) -> ModelFingerprints:
    """Every lookup reads its model's state, which changes only on an observation."""
    if state.frozen is None:
        state.frozen = ModelFingerprints(
            current=state.current, seen=tuple(state.seen.values()), changes_back=tuple(state.backs)
        )
    return state.frozen
