"""The storage contract every backend fulfils.

A stored answer is addressed by the request key plus the `system_fingerprint` it was made under,
so answers of several fingerprints can live side by side (`pin`, stale-if-error) while `follow`
asks only for the current ones. Values are opaque bytes, ready to send: the store never parses
them. Fingerprint bookkeeping lives here too, because replicas sharing a store must share it and
its updates must be atomic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from proxy.core.fingerprints import ModelFingerprints, Observation, Rotation
from proxy.core.routes import model_of


class StoreError(Exception):
    """The backend failed; callers fail open and count it."""


class StoreRefused(StoreError):
    """The store answered, refusing the command (Redis out of memory under noeviction): it is
    up, and its reads still stand; only this call failed."""


class StoreTimeout(StoreError):
    """The store did not answer within its deadline: a frozen store, not a failing command."""


class StoreUnusable(Exception):
    """The store answers but may never do what the proxy needs (a Redis user without the
    commands it runs): refused at start, rather than failing every write while serving."""


class Labels(NamedTuple):
    """What an operator selects entries by, kept beside the (possibly encrypted) value.

    `lineage`: the name the answer's fingerprints are tracked under (`routes.lineage_of`: a
    routed request's `MODEL@fleet-…`, a deployment's name), "" where it is `model` itself, as
    for nearly every answer, or unknown (an entry of an older version)."""

    namespace: str = ""
    model: str = ""
    lineage: str = ""


def labelled(namespace: str, model: str, lineage: str) -> Labels:
    """An answer's labels, its lineage left out where it is the model's own name."""
    return Labels(namespace, model, "" if lineage == model else lineage)


NO_LABELS = Labels()


@dataclass(frozen=True, slots=True)
class Selector:
    """Entries to purge: every given field must match; None matches anything. `model` matches
    a model's answers whatever their lineage, or the lineage named alone, as
    `/admin/rotations` reads it: `M` selects `M@fleet-…`'s answers too, `M@fleet-…` its own."""

    namespace: str | None = None
    model: str | None = None
    fingerprint: str | None = None

    def matches(self, labels: Labels, fingerprint: str) -> bool:
        return (
            (self.namespace is None or labels.namespace == self.namespace)
            and (self.model is None or self.model in _named(labels))
            and (self.fingerprint is None or fingerprint == self.fingerprint)
        )


class Write(NamedTuple):
    """One answer to store, as `put` and `record` take it.

    `ttl`: seconds of life, 0 for none; `labels`: what purges and exports select by.
    `unlock`: the token the writer led the fill with; the fill lock is released in the same
    step, after the value: a leader's write and its release then cost one round trip, and no
    follower that sees the lock gone can miss the answer. Released whoever holds it by then:
    another holds it only after the leader's expired, and the entry they would both fill is
    filled now, which is all the lock guards.
    `model` and `now`: for `record` only, the observation of the answer's fingerprint.
    """

    key: str
    fingerprint: str
    value: bytes
    ttl: int = 0
    labels: Labels = NO_LABELS
    unlock: str | None = None
    model: str = ""
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class Usage:
    """How much the store holds: answers (one per key and fingerprint), the bytes they take, and
    the bytes they would take were every value stored uncompressed (see proxy.core.codec)."""

    entries: int
    bytes: int
    raw_bytes: int


class Store(Protocol):
    shared: bool
    """Whether other processes use it too: only then do fill locks and write order matter
    beyond this process, and is a round trip worth saving."""

    async def get(self, key: str, fingerprints: Sequence[str] | None) -> dict[str, bytes]:
        """The values stored under `key` for these fingerprints (all of them when None)."""

    async def lookup(
        self, key: str, model: str | None
    ) -> tuple[ModelFingerprints | None, dict[str, bytes]]:
        """The model's fingerprint state and every value under `key`, in one round trip: what
        a HIT under `follow` needs, without waiting for one answer before asking the other.
        `model` None: the caller holds the state already; only the values are read (state None).
        """

    async def lookup_or_lock(
        self, key: str, model: str | None, token: str, ttl: float
    ) -> tuple[ModelFingerprints | None, dict[str, bytes], bool]:
        """`lookup`, and the fill lock of `key` taken for `token` in the same step when `key`
        holds nothing (True if taken): a leader's miss costs one round trip, not two."""

    async def put(self, write: Write) -> None:
        """Store `write.value`; `write.unlock`: see Write. `model` and `now` are not read."""

    async def record(self, write: Write) -> Observation:
        """`observe_fingerprint(write.model, write.fingerprint, write.now)`, then `put`, in one
        step where the backend allows: a fresh upstream answer costs one round trip, and under
        `follow` it is servable as soon as it is stored."""

    async def delete(self, key: str) -> None:
        """Forget every fingerprint's value under `key`."""

    async def purge(self, selector: Selector, dry_run: bool) -> int:
        """Delete (or only count, when `dry_run`) the entries `selector` matches, in batches
        that never block a shared backend."""

    async def usage(self) -> Usage:
        """Entries and bytes held, for the stats route."""

    def entries(self, selector: Selector) -> AsyncIterator[tuple[str, str, bytes]]:
        """(key, fingerprint, value) of every entry `selector` matches, read in batches."""

    async def observe_fingerprint(
        self, model: str, fingerprint: str, now: float, count: int = 1, moves: bool = True
    ) -> Observation:
        """Make `fingerprint` the model's current one, atomically, and say what changed (see
        `core.fingerprints.observed`); a change joins the model's rotation history.
        `count`: the answers this observation stands for (repeats counted in process, see
        FingerprintTracker), `now` the last of them; `moves` False for such a flush."""

    async def fingerprints(self, model: str) -> ModelFingerprints | None:
        """The model's fingerprint state, None if it never answered."""

    async def all_fingerprints(self) -> dict[str, ModelFingerprints]:
        """Every model's fingerprint state, for the admin route."""

    async def rotations(self, model: str) -> tuple[Rotation, ...]:
        """The model's latest changes of current fingerprint (at most ROTATIONS_KEPT), oldest
        first."""

    async def secret(self, candidate: bytes) -> bytes:
        """The shared HMAC secret: the stored one, else `candidate`, stored now."""

    async def dictionary(self, candidate: bytes | None) -> bytes | None:
        """The shared compression dictionary: the stored one, else `candidate`, stored now
        (None: only read). Like the secret, the first writer wins, so replicas agree."""

    async def lock(self, key: str, token: str, ttl: float) -> bool:
        """Take the fill lock of `key` for `ttl` seconds unless someone holds it; True if taken."""

    async def unlock(self, key: str, token: str) -> None:
        """Release the fill lock of `key` if `token` still holds it."""

    async def locked(self, key: str) -> bool:
        """Whether anyone holds the fill lock of `key`."""

    async def attempts(
        self, name: str, now: float, window: float, keep: int, add: bool
    ) -> tuple[float, ...]:
        """The times of `name`'s attempts within the last `window` seconds before `now` (at
        most the newest `keep`, oldest first), after adding one at `now` when `add`: the
        admin token's guesses, counted once for every process that shares the store."""

    async def mark(self, name: str, ttl: float) -> None:
        """Remember `name` for `ttl` seconds (an admin session issued, or logged out)."""

    async def marked(self, name: str) -> bool:
        """Whether `name` was marked, and its time is not over."""

    async def ping(self) -> None:
        """Raise StoreError unless the backend answers."""

    async def close(self) -> None:
        """Release connections."""


def _named(labels: Labels) -> tuple[str, ...]:
    """The names a `model` selector finds an entry by: its model, its lineage and the model
    that lineage tracks (a deployment's name, for an Azure per-deployment route)."""
    if not labels.lineage:
        return (labels.model,)
    return labels.model, labels.lineage, model_of(labels.lineage)
