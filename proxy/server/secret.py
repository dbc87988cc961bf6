"""The HMAC secret that partitions the cache by API key, agreed on through the store.

Replicas sharing a store must hash keys with the same secret, or they never share entries. With
`--secret` it is fixed. Otherwise the first replica to reach the store writes a random one and
everyone reads it. A replica that starts while the store is down uses a provisional secret of
its own (its entries are merely unreachable to the others, never wrong) and asks the store again
on each request until it gets the shared one (while the store's circuit is open that costs
nothing; a store that answers without one is asked once a second); if the store came back
empty, the provisional secret becomes the shared one.

A store can lose the secret while replicas run (a Redis restarted without persistence, a
FLUSHALL, an eviction): a replica started then would write one of its own, and it and the
running ones would never share a cache again. So in each round of `keep` a settled replica
offers its secret again, first writer winning as at start: an emptied store gets back the one the
running replicas use, and a replica that finds another adopts it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable

from proxy.core.credentials import Credentials, scope
from proxy.core.lru import LRU
from proxy.store.base import Store, StoreError, StoreRefused

MAX_REMEMBERED = 4096
MAX_REMEMBERED_BYTES = 1 << 20
"""Credentials held by the tenant memo: every request's are hashed, a refused caller's too, and
a request may carry 128 headers of 8 KiB."""

ASK_AGAIN_AFTER = 1.0
"""Seconds before asking again a store that answered but could not give a secret (a key of
another type there): the circuit stays closed, so each request would ask. A failing store costs
nothing to ask while its circuit is open."""

log = logging.getLogger("proxy.secret")


class Secret:
    def __init__(
        self, store: Store, fixed: str | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._clock = clock
        self._refused_at = -ASK_AGAIN_AFTER
        self.value = _keyed(fixed.encode()) if fixed else os.urandom(32)
        self._offered = self.value  # as the store holds it, before `_keyed`
        self.fixed = bool(fixed)
        self.provisional = not fixed
        self._failed = False
        self.tenants: LRU[Credentials, str] = LRU(MAX_REMEMBERED, MAX_REMEMBERED_BYTES)

    def tenant(self, credentials: Credentials) -> str:
        """The credentials' HMAC (their cache partition), remembered for the busiest tenants."""
        found = self.tenants.get(credentials)
        if found is None:
            found = scope(credentials, self.value)
            held = 64 + sum(len(name) + len(value) for name, value in credentials)
            self.tenants.put(credentials, found, held)
        return found

    async def settle(self) -> None:
        """Adopt the store's secret if this one is still provisional; free once settled."""
        if not self.provisional or self._clock() - self._refused_at < ASK_AGAIN_AFTER:
            return
        try:
            self._use(await self._store.secret(self.value))
        except StoreError as exc:
            if isinstance(exc, StoreRefused):
                self._refused_at = self._clock()
            if not self._failed:
                log.warning("store unavailable: using a provisional secret until it answers")
            self._failed = True
            return
        if self._failed:
            log.warning("store answers: now using the shared secret")
        self.provisional = False

    async def keep(self) -> None:
        """Offer the settled secret again; adopt the store's if it holds another (see above). A
        failing store is left to the breaker: the next offer asks again."""
        if self.fixed or self.provisional:
            return
        try:
            stored = await self._store.secret(self._offered)
        except StoreError:
            return
        if stored != self._offered:
            log.warning("the store holds another secret: now using it")
            self._use(stored)

    def _use(self, stored: bytes) -> None:
        self._offered = stored
        self.value = _keyed(stored)
        self.tenants.clear()


def _keyed(secret: bytes) -> bytes:
    """The secret as HMAC-SHA256 keys with it: a key longer than SHA-256's block is hashed first
    (RFC 2104), once here rather than in every tenant's HMAC, so the partitions are the same.
    Whoever writes the store chooses its length: megabytes would be hashed per new tenant."""
    return hashlib.sha256(secret).digest() if len(secret) > _BLOCK else secret


_BLOCK = hashlib.sha256().block_size
