"""The services one proxy process shares between requests, kept in the app, not in globals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy.config import Settings
from proxy.core.budget import HELD_AT_ONCE, Budget
from proxy.core.codec import Codec
from proxy.core.credentials import STANDARD
from proxy.core.entry import Entry
from proxy.core.hosts import HostCheck
from proxy.core.keyed import Keying
from proxy.core.lru import LRU
from proxy.metrics import Metrics
from proxy.server.coalesce import Coalescer
from proxy.server.dictionary import Dictionaries
from proxy.server.fingerprints import FingerprintTracker
from proxy.server.guesses import Guesses
from proxy.server.keycheck import KeyChecker
from proxy.server.offload import Offload
from proxy.server.probe import Prober
from proxy.server.secret import Secret
from proxy.server.verify import Verifier
from proxy.store.base import Store
from proxy.store.retired import Retired
from proxy.upstream.client import Upstream

if TYPE_CHECKING:
    from proxy.core.call import Call

# Bounds of the hot path's memos: a few thousand distinct requests and answers in rotation.
MEMO_ITEMS = 4096
CALL_MEMO_BYTES = 16 * 1024 * 1024
ENTRY_MEMO_BYTES = 32 * 1024 * 1024
UNREADABLE_BYTES = 1024 * 1024


Decoded = tuple[bytes, Entry, float | None]
"""A stored blob, its entry, and the earliest `expires_at` its answer names (`entry.expires_at`)."""


class EntryMemo(LRU[tuple[str, str], Decoded]):
    """Decoded entries by stored slot (key, fingerprint), with the blob each was decoded from;
    and the blobs found to be no entry, by slot (`unreadable`), so each is decoded once."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        super().__init__(max_items, max_bytes)
        self.unreadable: LRU[tuple[str, str], tuple[int, int]] = LRU(max_items, UNREADABLE_BYTES)
        self._dropped: set[str] = set()
        self._most_dropped = max_items

    def first_drop(self, key: str) -> bool:
        """Whether a misshapen answer under `key` is news, to be logged: once per key, for as
        many keys as the memo holds entries, so that a store full of them grows neither the log
        nor this set without bound (each drop is still counted as unreadable)."""
        if key in self._dropped or len(self._dropped) >= self._most_dropped:
            return False
        self._dropped.add(key)
        return True


def entry_memo(local_bytes: int = 0) -> EntryMemo:
    """Charged at each blob plus what it decodes to, and never more than twice the bytes the
    store keeps in this process (`local_bytes`, 0 for none): a small store must not carry a
    memo many times its own size."""
    budget = min(ENTRY_MEMO_BYTES, 2 * local_bytes) if local_bytes else ENTRY_MEMO_BYTES
    return EntryMemo(MEMO_ITEMS, budget)


@dataclass(slots=True)
class Lifecycle:
    """Set once the process is told to stop (see proxy.server.drain): `/readyz` then answers 503 so
    that a load balancer still asking on an open connection routes elsewhere, and every answer
    closes its connection, so that no client reuses one the proxy is about to close."""

    stopping: bool = False
    # the WebSockets open to clients (proxy/server/websocket.py), closed at once on a stop
    tunnels: set[web.WebSocketResponse] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Watch:
    """What a test session (the pytest plugin) is told of its requests as they are answered,
    to fail or warn the test that made them even when it swallowed the error."""

    missed: Callable[[Call], None]  # refused as a cache miss
    absent: Callable[[str], None]  # a fetch or deletion by id that found nothing (`METHOD /path`)
    # a request no replay answers (`METHOD /path`): refused replaying, passed through recording
    unreplayable: Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    store: Store
    upstream: Upstream
    metrics: Metrics
    fingerprints: FingerprintTracker
    coalescer: Coalescer
    keys: KeyChecker
    prober: Prober
    verifier: Verifier
    secret: Secret
    clock: Callable[[], float]
    codec: Codec
    dictionaries: Dictionaries
    hosts: HostCheck  # the Host names served (against DNS rebinding)
    credential_names: tuple[str, ...] = STANDARD  # headers that carry a tenant's credential
    keying: Keying = field(default_factory=Keying)  # which other request headers the key covers
    # What a test session learns of its requests as they are answered (the pytest plugin).
    watch: Watch | None = None
    # The id index keys of the answers a loaded cassette holds: requests by id for those are
    # answered as replay answers them, in every mode (proxy/server/responses.py)
    recorded: set[str] = field(default_factory=set)
    # Answers the upstream deleted, kept for the cassette this process records (None: it records
    # none, and a deleted answer is gone).
    retired: Retired | None = None
    # Results of pure functions, remembered for repeated requests (see proxy/server/caching.py).
    calls: LRU[tuple[Any, ...], Call] = field(
        default_factory=lambda: LRU(MEMO_ITEMS, CALL_MEMO_BYTES)
    )
    entries: EntryMemo = field(default_factory=entry_memo)
    # holder marks this process wrote (`recording.hold`), and when: a repeated HIT writes none
    held: LRU[str, float] = field(default_factory=lambda: LRU(MEMO_ITEMS))
    offload: Offload = field(default_factory=Offload)
    # what the streams being recorded hold together (proxy.core.budget)
    recordings: Budget = field(default_factory=lambda: Budget(HELD_AT_ONCE))
    # what the request bodies being read hold together (proxy.core.budget)
    reading: Budget = field(default_factory=lambda: Budget(HELD_AT_ONCE))
    guesses: Guesses = field(default_factory=Guesses)  # wrong admin tokens per address
    lifecycle: Lifecycle = field(default_factory=Lifecycle)


SERVICES = web.AppKey("services", Services)
