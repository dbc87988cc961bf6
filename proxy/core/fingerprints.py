"""What the proxy knows about a model's fingerprints (pure data).

The store keeps these, because replicas sharing a store must share them; the policy reads them
to decide which stored answers are current.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class FingerprintSeen:
    """One fingerprint of one model: when it first and last answered, and how often."""

    fingerprint: str
    first_seen: float
    last_seen: float
    count: int


@dataclass(frozen=True, slots=True)
class ModelFingerprints:
    """Everything known about one model's fingerprints, oldest first."""

    current: str
    seen: tuple[FingerprintSeen, ...] = field(default_factory=tuple)

    def last_seen(self, fingerprint: str) -> float | None:
        for item in self.seen:
            if item.fingerprint == fingerprint:
                return item.last_seen
        return None


@dataclass(frozen=True, slots=True)
class Observation:
    """What recording one upstream answer's fingerprint changed.

    `new` is true for exactly one caller across all replicas: the one whose answer first showed
    this fingerprint for this model; `previous` is the current fingerprint before the call.
    """

    previous: str | None
    new: bool
