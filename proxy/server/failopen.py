"""A store that errs: counted and logged, never a failed request.

Every reader and writer of the store fails open through here: a lookup that errs is a MISS, a
write that errs is a no-op, and both show in `repro_store_errors_total`.
"""

from __future__ import annotations

import logging

from proxy.core.codec import UnknownDictionary
from proxy.core.entry import CorruptEntry, Entry
from proxy.server.context import Services
from proxy.store.base import StoreError, Write
from proxy.store.guard import CircuitOpen

log = logging.getLogger("proxy.cache")


def unreadable(services: Services) -> None:
    """A stored value that is no entry this process can serve reads as absent, and is counted:
    another writer (a replica of another version, a client of the store) left it there."""
    services.metrics.store_errors.labels("unreadable").inc()


def store_failed(services: Services, op: str, exc: StoreError) -> None:
    """Count every failure; log only real ones: the breaker logs its own state changes."""
    services.metrics.store_errors.labels(op).inc()
    if not isinstance(exc, CircuitOpen):
        log.warning("store failed, serving without it", extra={"op": op, "error": str(exc)})


async def put(services: Services, write: Write) -> bool:
    """Whether the write took: one that errs is a no-op, counted and logged."""
    try:
        await services.store.put(write)
    except StoreError as exc:
        store_failed(services, "put", exc)
        return False
    return True


async def stored_entry(services: Services, key: str, fingerprint: str) -> Entry | None:
    """The entry in slot (`key`, `fingerprint`), read without the HIT path's memo (a fetch by
    id, a recorded read); None when there is none, the store errs, or the value is none this
    process can read (an unknown dictionary's, or no entry: each counted)."""
    try:
        blob = (await services.store.get(key, [fingerprint])).get(fingerprint)
    except StoreError as exc:
        store_failed(services, "get", exc)
        return None
    if blob is None:
        return None
    try:
        return services.codec.unpack(blob)
    except UnknownDictionary:
        services.dictionaries.unknown()
    except CorruptEntry:
        unreadable(services)
    return None
