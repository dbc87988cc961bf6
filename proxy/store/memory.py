"""The embedded store: a byte-bounded LRU in this process, and the reference for the contract.

Everything runs on one asyncio loop and no method awaits in the middle of an update, so each
operation is atomic without locks.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from proxy.core.codec import raw_size
from proxy.core.fingerprints import (
    BACKS_KEPT,
    ROTATIONS_KEPT,
    FingerprintSeen,
    ModelFingerprints,
    Observation,
    Rotation,
    observed,
)
from proxy.store.base import NO_LABELS, Labels, Selector, Usage, Write

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
ENTRY_OVERHEAD = 64
"""Bytes charged per entry on top of key, fingerprint and value, so tiny entries still count."""

REMEMBERED = 4096
"""Names kept by `attempts` and `revoke`."""

_Slot = tuple[str, str]


@dataclass(slots=True)
class _Model:
    current: str
    seen: dict[str, FingerprintSeen] = field(default_factory=dict)
    rotations: deque[Rotation] = field(default_factory=lambda: deque(maxlen=ROTATIONS_KEPT))
    backs: deque[float] = field(default_factory=lambda: deque(maxlen=BACKS_KEPT))
    frozen: ModelFingerprints | None = None  # the last snapshot, until the next observation


class MemoryStore:
    """Values per (key, fingerprint) in an LRU bounded by bytes, as stored (compressed: the bound
    counts what memory holds); fingerprint state in dicts.

    Per answer it keeps the value alone: its size and what it grows by uncompressed follow from
    it, and only an answer stored with a TTL has an expiry. A cache of many small answers is
    then mostly their bytes, and each miss allocates (and keeps) a few objects fewer, which
    costs a miss measurable CPU."""

    shared = False

    def __init__(
        self, max_bytes: int = DEFAULT_MAX_BYTES, clock: Callable[[], float] = time.time
    ) -> None:
        self._max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[_Slot, bytes] = OrderedDict()
        self._fingerprints_of: dict[str, tuple[str, ...]] = {}
        self._expires: dict[_Slot, float] = {}  # of the answers stored with a TTL
        self._expiries: list[tuple[float, _Slot]] = []  # a schedule; `_expires` is the truth
        self._size = 0
        self._expansion = 0
        self._models: dict[str, _Model] = {}
        self._secret: bytes | None = None
        self._dictionary: bytes | None = None
        self._locks: dict[str, tuple[str, float]] = {}
        self._labels: dict[str, Labels] = {}
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()
        self._revoked: OrderedDict[str, float] = OrderedDict()  # name -> until

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    async def get(self, key: str, fingerprints: Sequence[str] | None) -> dict[str, bytes]:
        self._drop_expired()
        wanted = self._fingerprints_of.get(key, ()) if fingerprints is None else fingerprints
        found: dict[str, bytes] = {}
        for fingerprint in wanted:
            slot = (key, fingerprint)
            value = self._entries.get(slot)
            if value is not None:
                self._entries.move_to_end(slot)
                found[fingerprint] = value
        return found

    async def lookup(
        self, key: str, model: str | None
    ) -> tuple[ModelFingerprints | None, dict[str, bytes]]:
        state = None if model is None else await self.fingerprints(model)
        return state, await self.get(key, None)

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
        key, fingerprint, value, ttl = write.key, write.fingerprint, write.value, write.ttl
        slot = (key, fingerprint)
        self._remove(slot)
        size = _charged(slot, value)
        if size > self._max_bytes:
            return
        self._entries[slot] = value
        others = self._fingerprints_of.get(key, ())
        self._fingerprints_of[key] = (*others, fingerprint)
        self._labels[key] = write.labels
        self._size += size
        self._expansion += raw_size(value) - len(value)
        if ttl > 0:
            expires = self._clock() + ttl
            self._expires[slot] = expires
            heapq.heappush(self._expiries, (expires, slot))
        self._evict()

    async def delete(self, key: str) -> None:
        for fingerprint in self._fingerprints_of.get(key, ()):
            self._remove((key, fingerprint))

    async def purge(self, selector: Selector, dry_run: bool) -> int:
        self._drop_expired()
        chosen = [
            (key, fingerprint)
            for key, fingerprint in self._entries
            if selector.matches(self._labels.get(key, Labels()), fingerprint)
        ]
        if not dry_run:
            for slot in chosen:
                self._remove(slot)
        return len(chosen)

    async def entries(self, selector: Selector) -> AsyncIterator[tuple[str, str, bytes]]:
        self._drop_expired()
        for (key, fingerprint), value in list(self._entries.items()):
            if selector.matches(self._labels.get(key, NO_LABELS), fingerprint):
                yield key, fingerprint, value

    async def usage(self) -> Usage:
        self._drop_expired()
        return Usage(len(self._entries), self._size, self._size + self._expansion)

    async def record(self, write: Write) -> Observation:
        seen = await self.observe_fingerprint(write.model, write.fingerprint, write.now)
        await self.put(write)
        return seen

    async def observe_fingerprint(
        self, model: str, fingerprint: str, now: float, count: int = 1, moves: bool = True
    ) -> Observation:
        state = self._models.get(model)
        previous = state.current if state is not None else None
        if state is None:
            state = self._models[model] = _Model(current=fingerprint)
        seen = state.seen.get(fingerprint)
        state.seen[fingerprint] = _seen_again(seen, fingerprint, now, count)
        outcome = observed(previous, fingerprint, seen is None, moves)
        if outcome.changed and previous is not None:
            state.rotations.append(Rotation(previous, fingerprint, now, outcome.back))
            if outcome.back:
                state.backs.append(now)
        state.current = outcome.current
        state.frozen = None
        return outcome

    async def fingerprints(self, model: str) -> ModelFingerprints | None:
        state = self._models.get(model)
        return None if state is None else _snapshot(state)

    async def all_fingerprints(self) -> dict[str, ModelFingerprints]:
        return {model: _snapshot(state) for model, state in self._models.items()}

    async def rotations(self, model: str) -> tuple[Rotation, ...]:
        state = self._models.get(model)
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

    async def revoke(self, name: str, ttl: float) -> None:
        """Bounded as `attempts`: only a valid session is revoked, so the names are few."""
        self._revoked.pop(name, None)
        self._revoked[name] = self._clock() + ttl
        while len(self._revoked) > REMEMBERED:
            self._revoked.popitem(last=False)

    async def revoked(self, name: str) -> bool:
        until = self._revoked.get(name)
        if until is not None and until <= self._clock():
            del self._revoked[name]
            until = None
        return until is not None

    async def ping(self) -> None:
        """Always answers: the store is this process."""

    async def close(self) -> None:
        """Nothing to release."""

    def _remove(self, slot: _Slot) -> None:
        value = self._entries.pop(slot, None)
        if value is None:
            return
        self._size -= _charged(slot, value)
        self._expansion -= raw_size(value) - len(value)
        self._expires.pop(slot, None)
        key, fingerprint = slot
        others = tuple(other for other in self._fingerprints_of[key] if other != fingerprint)
        if others:
            self._fingerprints_of[key] = others
        else:
            del self._fingerprints_of[key]
            self._labels.pop(key, None)

    def _evict(self) -> None:
        while self._size > self._max_bytes:
            self._remove(next(iter(self._entries)))

    def _drop_expired(self) -> None:
        """Expired entries leave as soon as any call notices, so they stop counting to the bound."""
        if not self._expiries:
            return
        now = self._clock()
        while self._expiries and self._expiries[0][0] <= now:
            expires, slot = heapq.heappop(self._expiries)
            if self._expires.get(slot) == expires:  # else replaced or removed since
                self._remove(slot)
        if len(self._expiries) > 2 * len(self._expires) + 64:
            self._compact_expiries()

    def _compact_expiries(self) -> None:
        """Forget the schedules of replaced and evicted entries, so they cannot pile up."""
        self._expiries = [(expires, slot) for slot, expires in self._expires.items()]
        heapq.heapify(self._expiries)


def _charged(slot: _Slot, value: bytes) -> int:
    """What an answer counts against the bound: its value, its address, and ENTRY_OVERHEAD."""
    return len(value) + len(slot[0]) + len(slot[1]) + ENTRY_OVERHEAD


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
