"""The current system_fingerprint of each model, learned from upstream answers.

The state lives in the store so that replicas share it; this module turns observations into
metrics and one log line per change of the current fingerprint ("rotated" to a new one, "rotated
back" to an earlier one: the store tells exactly one caller of each), and tells the cache which
fingerprints are servable.

Most answers repeat the model's current fingerprint, and recording each would write the model's
record in the store on every miss: a hot key on one node of a cluster, and the larger part of
Redis's work per miss. A repeat of the fingerprint this process knows to be current is counted
here instead and reaches the store within `FLUSH_AFTER` seconds as one observation standing for
all of them. Anything else (a new fingerprint, a rotation back, a model not seen yet) is recorded
at once, after the repeats counted so far, so the store's order of events is kept. So is the
next answer of a model whose record the store lost (a FLUSHALL, an eviction): counted, it would
leave the model without a current fingerprint, every lookup a MISS, until the count is flushed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from proxy.core.fingerprints import Lineages, ModelFingerprints, Observation
from proxy.core.policy import FingerprintPolicy, acceptable_fingerprints, alternating
from proxy.metrics import Metrics
from proxy.store.base import Store, StoreError
from proxy.store.guard import CircuitOpen

log = logging.getLogger("proxy.fingerprints")

FLUSH_AFTER = 1.0
"""Seconds a counted repeat may wait before the store hears of it."""


@dataclass(slots=True)
class _Repeats:
    """Answers of a model's current fingerprint counted here, not yet in the store."""

    fingerprint: str
    count: int
    last_seen: float


WARNED_EVERY = 60.0
"""Seconds between two warnings of one model's fingerprint changes (`FingerprintTracker._loud`)."""


class FingerprintTracker:
    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        policy: FingerprintPolicy,
        grace: float,
        clock: Callable[[], float],
        flush_after: float = FLUSH_AFTER,
        flap_window: float = 0.0,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._policy = policy
        self._grace = grace
        self._flap_window = flap_window
        self._clock = clock
        self._flush_after = flush_after
        # Per lineage, the fingerprint the store said is current (one forgotten past its bound
        # has its next answer recorded, not counted).
        self._current: Lineages[str] = Lineages()
        self._repeats: dict[str, _Repeats] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._warned: Lineages[float] = Lineages()  # when each lineage's last warning was
        self._flushing: set[asyncio.Task[None]] = set()

    def acceptable(self, model: str, state: ModelFingerprints | None) -> Sequence[str] | None:
        """Fingerprints whose entries may be served for `model`; None means any."""
        now = self._clock()
        if state is None:  # the store lost the model's record (flushed, evicted), if it had one:
            self._current.pop(model)  # the next answer writes it again, not counted here
        else:
            self._metrics.fingerprint_current(model, state.current)
            self._metrics.fingerprint_alternating(model, alternating(state, now, self._flap_window))
            known = self._current.get(model)
            if known is not None and known != state.current:
                self._current.pop(model)  # another replica moved it: record the next one at once
        return acceptable_fingerprints(self._policy, state, self._grace, now, self._flap_window)

    def now(self) -> float:
        """The time an observation is stamped with."""
        return self._clock()

    def counted(self, model: str, fingerprint: str) -> bool:
        """Count a repeat of the model's current fingerprint here (True); False when this answer
        must be recorded now (`observe`, or the store's `record` after `flush(model)`)."""
        if self._current.get(model) != fingerprint:
            return False
        now = self._clock()
        repeats = self._repeats.get(model)
        if repeats is None:
            self._repeats[model] = _Repeats(fingerprint, 1, now)
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self._flush_after, self._due)
        else:
            repeats.count += 1
            repeats.last_seen = max(repeats.last_seen, now)
        return True

    def lost(self, model: str, counted: bool) -> None:
        """The store failed to write an answer: its observation is lost with it (a repeat
        `counted` here is taken back), and until the store confirms a fingerprint again every
        answer of the model is recorded, not counted."""
        self._current.pop(model)
        repeats = self._repeats.get(model)
        if counted and repeats is not None:
            repeats.count -= 1
            if not repeats.count:
                del self._repeats[model]

    async def observe(self, model: str, fingerprint: str) -> None:
        """Record the fingerprint of a fresh upstream answer; count and log a rotation."""
        if self.counted(model, fingerprint):
            return
        await self.flush(model)
        seen = await self._store.observe_fingerprint(model, fingerprint, self.now())
        self.learned(model, fingerprint, seen)

    def learned(self, model: str, fingerprint: str, seen: Observation) -> None:
        """What the store said of an observation (`observe`, or a write's `Store.record`)."""
        if seen.current == fingerprint:
            self._current.put(model, fingerprint)
        else:  # a late flush of repeats: another replica moved it since
            self._current.pop(model)
        self._metrics.fingerprint_current(model, seen.current)
        if seen.changed:
            change = "rotated back" if seen.back else "rotated"
            self._metrics.fingerprint_changed(model, back=seen.back)
            log.log(
                logging.WARNING if self._loud(model) else logging.INFO,
                f"fingerprint {change}",
                extra={"model": model, "old": seen.previous, "new": fingerprint, "change": change},
            )

    def _loud(self, model: str) -> bool:
        """Whether a change of `model` is a warning: the first in WARNED_EVERY seconds. A fleet
        mid-rollout (or an upstream naming a new fingerprint with every answer) changes it on
        every other miss, a warning each, which buried every other; the later ones are at info,
        and every change is counted (repro_fingerprint_changes_total)."""
        now = self._clock()
        last = self._warned.get(model)
        if last is not None and now - last < WARNED_EVERY:
            return False
        self._warned.put(model, now)
        return True

    async def flush(self, model: str | None = None) -> None:
        """Give the store the repeats counted so far (of one model, or of all). A store that
        fails loses them, counted in repro_store_errors_total like any failed observation."""
        models = list(self._repeats) if model is None else [model]
        for name in models:
            repeats = self._repeats.pop(name, None)
            if repeats is None:
                continue
            try:
                seen = await self._store.observe_fingerprint(
                    name, repeats.fingerprint, repeats.last_seen, repeats.count, moves=False
                )
            except StoreError as exc:
                self._metrics.store_errors.labels("fingerprint").inc()
                if not isinstance(exc, CircuitOpen):
                    log.warning("fingerprint counts lost", extra={"error": str(exc)})
                continue
            self.learned(name, repeats.fingerprint, seen)

    def _due(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self.flush())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def close(self) -> None:
        """Flush what is counted, before the store closes."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flushing:
            await asyncio.gather(*self._flushing)
        await self.flush()
