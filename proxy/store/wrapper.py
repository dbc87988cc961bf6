"""A store in front of another: every call passes through unless a subclass changes it.

The encryption and near-cache layers each change a few calls; the rest of the protocol is theirs
by inheritance, so a call added to the protocol needs one pass-through, here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from proxy.core.fingerprints import ModelFingerprints, Observation, Rotation
from proxy.store.base import Selector, Store, Usage, Write


class StoreWrapper:
    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.shared = inner.shared

    async def get(self, key: str, fingerprints: Sequence[str] | None) -> dict[str, bytes]:
        return await self.inner.get(key, fingerprints)

    async def lookup(
        self, key: str, model: str | None
    ) -> tuple[ModelFingerprints | None, dict[str, bytes]]:
        return await self.inner.lookup(key, model)

    async def lookup_or_lock(
        self, key: str, model: str | None, token: str, ttl: float
    ) -> tuple[ModelFingerprints | None, dict[str, bytes], bool]:
        return await self.inner.lookup_or_lock(key, model, token, ttl)

    async def put(self, write: Write) -> None:
        await self.inner.put(write)

    async def record(self, write: Write) -> Observation:
        return await self.inner.record(write)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def purge(self, selector: Selector, dry_run: bool) -> int:
        return await self.inner.purge(selector, dry_run)

    async def usage(self) -> Usage:
        return await self.inner.usage()

    def entries(self, selector: Selector) -> AsyncIterator[tuple[str, str, bytes]]:
        return self.inner.entries(selector)

    async def observe_fingerprint(
        self, model: str, fingerprint: str, now: float, count: int = 1, moves: bool = True
    ) -> Observation:
        return await self.inner.observe_fingerprint(model, fingerprint, now, count, moves)

    async def fingerprints(self, model: str) -> ModelFingerprints | None:
        return await self.inner.fingerprints(model)

    async def all_fingerprints(self) -> dict[str, ModelFingerprints]:
        return await self.inner.all_fingerprints()

    async def rotations(self, model: str) -> tuple[Rotation, ...]:
        return await self.inner.rotations(model)

    async def secret(self, candidate: bytes) -> bytes:
        return await self.inner.secret(candidate)

    async def dictionary(self, candidate: bytes | None) -> bytes | None:
        return await self.inner.dictionary(candidate)

    async def lock(self, key: str, token: str, ttl: float) -> bool:
        return await self.inner.lock(key, token, ttl)

    async def unlock(self, key: str, token: str) -> None:
        await self.inner.unlock(key, token)

    async def locked(self, key: str) -> bool:
        return await self.inner.locked(key)

    async def attempts(
        self, name: str, now: float, window: float, keep: int, add: bool
    ) -> tuple[float, ...]:
        return await self.inner.attempts(name, now, window, keep, add)

    async def mark(self, name: str, ttl: float) -> None:
        await self.inner.mark(name, ttl)

    async def marked(self, name: str) -> bool:
        return await self.inner.marked(name)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()
