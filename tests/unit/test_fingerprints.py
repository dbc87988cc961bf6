"""The fingerprint tracker over the memory store: repeats of the current fingerprint are counted
in process and reach the store as one observation, without changing what the store ends up
holding or the order of its events."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from proxy.core.fingerprints import FingerprintSeen, ModelFingerprints
from proxy.core.policy import FingerprintPolicy
from proxy.metrics import Metrics
from proxy.server.fingerprints import FingerprintTracker
from proxy.store.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def tracker(store: MemoryStore, flush_after: float = 60.0) -> tuple[FingerprintTracker, Metrics]:
    metrics = Metrics(CollectorRegistry())
    made = FingerprintTracker(store, metrics, FingerprintPolicy.FOLLOW, 0.0, Clock(), flush_after)
    return made, metrics


async def seen(store: MemoryStore, model: str = "m") -> list[tuple[str, int, float]]:
    state = await store.fingerprints(model)
    assert state is not None
    return [(s.fingerprint, s.count, s.last_seen) for s in state.seen]


async def test_repeats_reach_the_store_as_one_observation_with_the_exact_count() -> None:
    store = MemoryStore()
    fingerprints, _ = tracker(store)
    await fingerprints.observe("m", "fp")  # t=101: unknown model, recorded at once
    for _ in range(3):  # t=102..104: repeats of the current fingerprint
        await fingerprints.observe("m", "fp")
    assert await seen(store) == [("fp", 1, 101.0)]
    await fingerprints.flush()
    assert await seen(store) == [("fp", 4, 104.0)]
    await fingerprints.flush()  # nothing left to give
    assert await seen(store) == [("fp", 4, 104.0)]


async def test_a_new_fingerprint_goes_after_the_repeats_and_counts_as_a_rotation() -> None:
    store = MemoryStore()
    fingerprints, metrics = tracker(store)
    for _ in range(3):
        await fingerprints.observe("m", "fp")
    await fingerprints.observe("m", "fp2")
    state = await store.fingerprints("m")
    assert state is not None and state.current == "fp2"
    assert await seen(store) == [("fp", 3, 103.0), ("fp2", 1, 104.0)]
    assert metrics.fingerprint_changes.labels("m")._value.get() == 1


async def test_counted_repeats_are_flushed_on_their_own_and_on_close() -> None:
    store = MemoryStore()
    fingerprints, _ = tracker(store, flush_after=0.05)
    await fingerprints.observe("m", "fp")
    await fingerprints.observe("m", "fp")
    for _ in range(100):  # bounded: the timer fires after 0.05 s
        if (await seen(store))[0][1] == 2:
            break
        await asyncio.sleep(0.01)
    assert await seen(store) == [("fp", 2, 102.0)]
    await fingerprints.observe("m", "fp")
    await fingerprints.close()
    assert await seen(store) == [("fp", 3, 103.0)]


async def test_a_failed_write_takes_its_repeat_back_and_stops_counting() -> None:
    store = MemoryStore()
    fingerprints, _ = tracker(store)
    await fingerprints.observe("m", "fp")
    assert fingerprints.counted("m", "fp")
    assert fingerprints.counted("m", "fp")
    fingerprints.lost("m", counted=True)  # the second one's write failed
    assert not fingerprints.counted("m", "fp")  # recorded at once until the store confirms
    await fingerprints.flush()
    assert await seen(store) == [("fp", 2, 103.0)]  # its answer still came at 103


async def test_another_replicas_rotation_ends_the_counting() -> None:
    """Seen in a lookup's state: the next answer of the old fingerprint is recorded at once,
    as it would have been without counting (and moves `current` back, as the upstream did)."""
    store = MemoryStore()
    fingerprints, _ = tracker(store)
    await fingerprints.observe("m", "fp")
    other = ModelFingerprints("fp2", (FingerprintSeen("fp2", 1.0, 1.0, 1),))
    fingerprints.acceptable("m", other)
    assert not fingerprints.counted("m", "fp")
