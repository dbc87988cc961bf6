"""The current system_fingerprint of each model, learned from upstream answers.

The state lives in the store so that replicas share it; this module turns observations into
metrics and one log line per rotation, and tells the cache which fingerprints are servable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from proxy.metrics import Metrics
from proxy.policy import FingerprintPolicy, acceptable_fingerprints
from proxy.store.base import ModelFingerprints, Observation, Store

log = logging.getLogger("proxy.fingerprints")


class FingerprintTracker:
    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        policy: FingerprintPolicy,
        grace: float,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._policy = policy
        self._grace = grace
        self._clock = clock

    def acceptable(self, model: str, state: ModelFingerprints | None) -> Sequence[str] | None:
        """Fingerprints whose entries may be served for `model`; None means any."""
        if state is not None:
            self._metrics.fingerprint_current(model, state.current)
        return acceptable_fingerprints(self._policy, state, self._grace, self._clock())

    async def observe(self, model: str, fingerprint: str) -> None:
        """Record the fingerprint of a fresh upstream answer; count and log a rotation."""
        self.learned(
            model,
            fingerprint,
            await self._store.observe_fingerprint(model, fingerprint, self.now()),
        )

    def now(self) -> float:
        """The time an observation is stamped with."""
        return self._clock()

    def learned(self, model: str, fingerprint: str, seen: Observation) -> None:
        """What the store said of an observation (`observe`, or a write's `Store.record`)."""
        self._metrics.fingerprint_current(model, fingerprint)
        if seen.new and seen.previous is not None:
            self._metrics.fingerprint_changes.labels(self._metrics.model(model)).inc()
            log.warning(
                "fingerprint rotated",
                extra={"model": model, "old": seen.previous, "new": fingerprint},
            )
