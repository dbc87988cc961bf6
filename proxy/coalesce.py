"""One upstream call for identical concurrent misses, as nginx's proxy_cache_lock does.

The first request for a key leads: it holds a local event, and on a shared store the store's fill
lock (so leaders in other replicas sharing Redis are excluded too), while it calls the upstream and
stores the answer; the write itself releases the lock. Followers wait, in-process on the event or
across replicas by polling the lock, then look the key up again and usually HIT. A leader that dies
or outlives the lock timeout lets the followers go: they then call the upstream themselves, so
nothing ever deadlocks. A store that fails makes everyone a leader: coalescing is an optimisation,
never a dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.store.base import Store, StoreError

POLL_INTERVAL = 0.02


@dataclass(slots=True)
class Lease:
    """The right to fill one key; released when the upstream answer is stored (or not)."""

    key: str
    token: str | None  # None: no store lock to release (none taken, or the write released it)
    event: asyncio.Event


class Coalescer:
    def __init__(
        self, store: Store, timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._timeout = timeout
        self._clock = clock
        self._local: dict[str, asyncio.Event] = {}

    @property
    def enabled(self) -> bool:
        return self._timeout > 0

    async def acquire(self, key: str) -> Lease | None:
        """A lease when this request should fill the key; None after waiting for another one."""
        local = self._local.get(key)
        if local is not None:
            await _wait(local, self._timeout)
            return None
        event = asyncio.Event()
        self._local[key] = event
        if not self._store.shared:  # this process is the only one filling: the event suffices
            return Lease(key, None, event)
        token = secrets.token_hex(8)
        try:
            taken = await self._store.lock(key, token, self._timeout)
        except StoreError:
            return Lease(key, None, event)
        if taken:
            return Lease(key, token, event)
        try:
            await self._wait_remote(key)
        finally:
            self._finish(key, event)
        return None

    async def release(self, lease: Lease) -> None:
        """Let the followers look again; the store lock goes only if it is still ours."""
        self._finish(lease.key, lease.event)
        if lease.token is None:
            return
        with contextlib.suppress(StoreError):  # the lock then expires on its own
            await self._store.unlock(lease.key, lease.token)

    async def _wait_remote(self, key: str) -> None:
        deadline = self._clock() + self._timeout
        while self._clock() < deadline:
            try:
                if not await self._store.locked(key):
                    return
            except StoreError:
                return
            await asyncio.sleep(POLL_INTERVAL)

    def _finish(self, key: str, event: asyncio.Event) -> None:
        event.set()
        if self._local.get(key) is event:
            del self._local[key]


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
