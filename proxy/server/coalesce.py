"""One upstream call for identical concurrent misses, as nginx's proxy_cache_lock does.

The first request for a key leads: it holds a local event, and on a shared store the store's fill
lock (so leaders in other replicas sharing Redis are excluded too), while it calls the upstream and
stores the answer; the leader's lookup takes the lock, and its write releases it. Followers wait,
in-process on the event or across replicas by polling the lock, then look the key up again and
usually HIT. A leader that dies or outlives the lock timeout lets the followers go: they then call
the upstream themselves, so nothing ever deadlocks. The timeout counts from the leader's claim, not
from each follower's arrival: a leader that hangs (its upstream call may last
`--upstream-timeout`, ten minutes by default) holds every identical request at most what is left of
its timeout, and once that ran out the next request leads in its place (as nginx's
proxy_cache_lock_age lets one more through), so a hung fill neither delays nor keeps out of the
cache every later request of its key. A store that fails makes everyone a leader:
coalescing is an optimisation, never a dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
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
    token: str | None  # the store lock's token; None when no store lock is to be had
    deadline: float  # when followers stop waiting for it, and the next request may lead
    held: bool = False  # the store lock is held now (released by the write, or by `release`)
    # Made by the first follower to wait: most leases (every HIT's, every unique miss's) have
    # no follower, and an Event per request costs a miss measurable CPU.
    event: asyncio.Event | None = None


class Coalescer:
    def __init__(
        self, store: Store, timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._timeout = timeout
        self._clock = clock
        self._local: dict[str, Lease] = {}
        # A lock token names its holder among the replicas: this process, then a counter (every
        # HIT claims a key, and a random token per claim would cost a urandom call each).
        self._holder = secrets.token_hex(8)
        self._leases = itertools.count()

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def enabled(self) -> bool:
        return self._timeout > 0

    @property
    def shared(self) -> bool:
        """Whether other processes fill through the store too: a lease must then win its lock."""
        return self._store.shared

    def claim(self, key: str) -> Lease | None:
        """Lead the fill of `key` in this process; None when another request here already does.
        On a shared store the lease must still win the store lock: `Store.lookup_or_lock` takes
        it with the lookup, else `lock` does. A leader past its deadline is taken over."""
        now = self._clock()
        leader = self._local.get(key)
        if leader is not None and now < leader.deadline:
            return None
        token = f"{self._holder}.{next(self._leases):x}" if self._store.shared else None
        lease = self._local[key] = Lease(key, token, now + self._timeout)
        return lease

    async def lock(self, lease: Lease) -> bool:
        """Win the store lock for a claim that does not hold it yet. False after waiting for
        another replica's leader (or its lock timeout): the claim is then given up."""
        if lease.token is None or lease.held:
            return True
        try:
            lease.held = await self._store.lock(lease.key, lease.token, self._timeout)
        except StoreError:
            lease.token = None
            return True
        if lease.held:
            return True
        lease.token = None
        try:
            await self._wait_remote(lease.key)
        finally:
            self._finish(lease)
        return False

    async def wait(self, key: str) -> None:
        """Until this process's leader for `key` is done, or its deadline."""
        leader = self._local.get(key)
        if leader is not None:
            left = leader.deadline - self._clock()
            if left <= 0:
                return
            if leader.event is None:
                leader.event = asyncio.Event()
            await _wait(leader.event, left)

    async def release(self, lease: Lease) -> None:
        """Let the followers look again; the store lock goes only if it is still ours."""
        self._finish(lease)
        if lease.token is None or not lease.held:
            return
        lease.held = False
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

    def _finish(self, lease: Lease) -> None:
        if lease.event is not None:
            lease.event.set()
        if self._local.get(lease.key) is lease:
            del self._local[lease.key]


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
