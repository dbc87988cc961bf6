"""The round in which a running replica gives the store back what replicas share.

A store can lose that state while replicas run (a Redis restarted without persistence, a
FLUSHALL, an eviction, a failover to an empty replica), and nothing on a request's path would
notice: a replica started afterwards would write a secret and a dictionary of its own, and the
near-caches would go on serving what Redis no longer holds. So every `KEEP_EVERY` seconds one
background task asks each part to `keep`: the secret and the dictionary are offered again
(first writer wins, as at start), and the near-cache checks the store's generation. Each is one
small round trip, never on a request's path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

KEEP_EVERY = 5.0
"""Seconds between rounds: how long a replica started after a loss may use state of its own,
and how long a near-cache may serve what a flush removed."""

log = logging.getLogger("proxy.store")


class Kept(Protocol):
    async def keep(self) -> None:
        """One round: a failing store is left for the next one."""


async def keep(parts: Sequence[Kept], every: float = KEEP_EVERY) -> None:
    """Run the rounds for as long as the proxy runs. A part gets at most a round's time (a store
    that hangs is the breaker's to report), and one part's fault stops neither the others nor
    the next round."""
    while True:
        await asyncio.sleep(every)
        for part in parts:
            name = type(part).__name__
            try:
                async with asyncio.timeout(every):
                    await part.keep()
            except TimeoutError:
                continue
            except Exception:
                log.exception("keeping the store's shared state failed", extra={"part": name})
