"""What the proxy knows about a model's fingerprints (pure data).

The store keeps these, because replicas sharing a store must share them; the policy reads them
to decide which stored answers are current.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from proxy.core.lru import LRU
from proxy.core.routes import routed

ROTATIONS_KEPT = 50
"""Rotations remembered per model, newest first out of the store: enough to see a rollout's
flapping and a year of real rotations, small enough to read in one call."""

FINGERPRINTS_KEPT = 32
"""Fingerprints remembered per model. Real ones change a few times a year, and a fleet in a
rollout answers with two or three; an upstream naming a new one with every answer would grow the
state every lookup reads without end. Past this, a new fingerprint makes the model forget the
one it saw last longest ago (never the current one)."""

ANSWERS_KEPT = 8
"""Answers a key keeps, one per fingerprint: the current one's, and a few before it for a
grace window, a pin or a fleet answering with several. An upstream naming a new fingerprint
with every answer would otherwise add one to the key with every miss, each up to `--max-entry`,
and every lookup of the key reads them all. Past it, a new answer makes the key forget others
(the oldest in the memory store; any in Redis)."""

MAX_MODEL_NAME = 256
"""Characters of a model name the proxy keeps anything for (fingerprints, answers, probes). The
name is the client's to choose, as long as a request body, and each new one is state kept for
good: a model named longer than any real one is passed through, learned and stored nothing."""

MODELS_KEPT = 1024
"""Models whose fingerprint state a store and each process keep, the least recently used
forgotten past it. Which names the upstream answers for is not the proxy's to choose: one that
answers any name (a local server that serves one model whatever it is called) would otherwise
grow the state by one model per request naming a new one. A forgotten model's next lookup is a
MISS, whose answer teaches its fingerprint again; a deployment serves far fewer models."""

ROUTED_KEPT = 256
"""Routed lineages (`routes.routed`: a model on a request that keyed headers or query parameters
route, `<model>@fleet-…`) whose fingerprint state a store and each process keep, apart from and
besides MODELS_KEPT's: a routing is the client's to invent with any header value an upstream
ignores, one new lineage per request, and counted with the models they would push every
tenant's models out of the state kept, each of their next lookups a MISS. Kept apart, a routed
lineage only ever makes another routed lineage forgotten; real gateways route to a handful of
fleets per model."""

V = TypeVar("V")


class Lineages(Generic[V]):
    """An LRU per lineage, routed lineages bounded apart (ROUTED_KEPT) from the others
    (MODELS_KEPT), so that no number of routed ones makes a model's own state forgotten."""

    def __init__(self, models: int = MODELS_KEPT, routed_lineages: int = ROUTED_KEPT) -> None:
        self._models: LRU[str, V] = LRU(models)
        self._routed: LRU[str, V] = LRU(routed_lineages)

    def _of(self, lineage: str) -> LRU[str, V]:
        return self._routed if routed(lineage) else self._models

    def __len__(self) -> int:
        return len(self._models) + len(self._routed)

    def get(self, lineage: str) -> V | None:
        return self._of(lineage).get(lineage)

    def pop(self, lineage: str) -> V | None:
        return self._of(lineage).pop(lineage)

    def put(self, lineage: str, value: V) -> None:
        self._of(lineage).put(lineage, value)

    def clear(self) -> None:
        self._models.clear()
        self._routed.clear()


BACKS_KEPT = 8
"""Times of the latest changes back to an earlier fingerprint kept in the model's state: what
the policy needs to tell an alternating upstream from a rotated one."""


def tracked(model: str) -> bool:
    """Whether the proxy keeps state for a model of this name (`MAX_MODEL_NAME`)."""
    return len(model) <= MAX_MODEL_NAME


@dataclass(frozen=True, slots=True)
class FingerprintSeen:
    """One fingerprint of one model: when it first and last answered, and how often."""

    fingerprint: str
    first_seen: float
    last_seen: float
    count: int


@dataclass(frozen=True, slots=True)
class ModelFingerprints:
    """Everything known about one model's fingerprints, oldest first.

    `changes_back`: when the current fingerprint last moved back to an earlier one (at most
    BACKS_KEPT times, oldest first)."""

    current: str
    seen: tuple[FingerprintSeen, ...] = field(default_factory=tuple)
    changes_back: tuple[float, ...] = ()

    def last_seen(self, fingerprint: str) -> float | None:
        for item in self.seen:
            if item.fingerprint == fingerprint:
                return item.last_seen
        return None


@dataclass(frozen=True, slots=True)
class Observation:
    """What recording one upstream answer's fingerprint changed, decided by the store at once.

    `new`: this caller's answer first showed this fingerprint for this model (exactly one caller
    across all replicas). `changed`: this caller moved the model's current fingerprint (to a new
    one or back to an earlier one; again exactly one caller per move). `previous` is the current
    fingerprint before the call, `current` after it: a flush of repeats does not move it back.
    """

    previous: str | None
    new: bool
    changed: bool
    current: str

    @property
    def back(self) -> bool:
        """A change to a fingerprint the model answered with before: a rollback or a flap."""
        return self.changed and not self.new


@dataclass(frozen=True, slots=True)
class Rotation:
    """One change of a model's current fingerprint; `back`: to one it had before."""

    old: str
    new: str
    at: float
    back: bool


def observed(previous: str | None, fingerprint: str, new: bool, moves: bool = True) -> Observation:
    """The outcome of an observation, the one rule every store applies.

    `moves` False (repeats counted in a process and flushed late) never moves the current
    fingerprint away: another replica's newer answer moved it meanwhile, and moving it back would
    log a rotation the upstream never made. A fingerprint the store never saw moves it anyway."""
    if previous is None or previous == fingerprint:
        return Observation(previous, new, changed=False, current=fingerprint)
    if not moves and not new:
        return Observation(previous, new, changed=False, current=previous)
    return Observation(previous, new, changed=True, current=fingerprint)


def least_recent(seen: Iterable[FingerprintSeen], keep: Container[str]) -> str | None:
    """The fingerprint seen last longest ago, among those not in `keep` (see
    FINGERPRINTS_KEPT)."""
    candidates = [record for record in seen if record.fingerprint not in keep]
    oldest = min(candidates, key=lambda record: record.last_seen, default=None)
    return None if oldest is None else oldest.fingerprint
