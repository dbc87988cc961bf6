"""A store that errs: counted and logged, never a failed request.

Every reader and writer of the store fails open through here: a lookup that errs is a MISS, a
write that errs is a no-op, and both show in `repro_store_errors_total`.
"""

from __future__ import annotations

import logging

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
