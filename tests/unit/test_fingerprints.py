"""The fingerprint tracker over the memory store: repeats of the current fingerprint are counted
in process and reach the store as one observation, without changing what the store ends up
holding or the order of its events."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from proxy.core.fingerprints import FingerprintSeen, ModelFingerprints
from proxy.core.policy import FingerprintPolicy
from proxy.metrics import Metrics
from proxy.server.fingerprints import WARNED_EVERY, FingerprintTracker
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


def changes(metrics: Metrics, model: str = "m") -> tuple[float, float]:
    return (
        metrics.fingerprint_changes.labels(model)._value.get(),
        metrics.fingerprint_flaps.labels(model)._value.get(),
    )


async def test_a_rotation_back_is_counted_and_logged_as_rotated_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    fingerprints, metrics = tracker(store)
    caplog.set_level(logging.INFO, "proxy.fingerprints")
    for fingerprint in ("fp_1", "fp_2", "fp_1"):
        await fingerprints.observe("m", fingerprint)
    assert changes(metrics) == (2, 1)
    told = [(r.getMessage(), r.__dict__["old"], r.__dict__["new"]) for r in caplog.records]
    assert told == [
        ("fingerprint rotated", "fp_1", "fp_2"),
        ("fingerprint rotated back", "fp_2", "fp_1"),
    ]
    assert [r.back for r in await store.rotations("m")] == [False, True]


async def test_a_model_changing_on_every_miss_warns_once_a_minute_and_logs_every_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A fleet mid-rollout answers with two fingerprints at random: a warning on every other
    miss buried every other warning. Every change is still counted and logged, at info."""
    store = MemoryStore()
    clock = Clock()
    metrics = Metrics(CollectorRegistry())
    fingerprints = FingerprintTracker(store, metrics, FingerprintPolicy.FOLLOW, 0.0, clock, 60.0)
    caplog.set_level(logging.INFO, "proxy.fingerprints")
    for fingerprint in ["fp_1", "fp_2", "fp_1", "fp_2", "fp_1"]:
        await fingerprints.observe("m", fingerprint)
    await fingerprints.observe("other", "fp_a")
    await fingerprints.observe("other", "fp_b")
    clock.now += WARNED_EVERY
    await fingerprints.observe("m", "fp_2")
    levels = [(r.__dict__["model"], r.levelname) for r in caplog.records]
    assert levels == [
        ("m", "WARNING"),
        *[("m", "INFO")] * 3,
        ("other", "WARNING"),  # each model its own
        ("m", "WARNING"),  # a minute later, again
    ]
    assert changes(metrics) == (5, 4)


async def test_a_late_flush_after_another_replicas_rotation_logs_nothing() -> None:
    """Replica A counted repeats of fp_1; replica B saw fp_2 meanwhile. A's flush must not move
    the model back, or every rotation would read as a flap on a fleet."""
    store = MemoryStore()
    replica_a, metrics_a = tracker(store)
    replica_b, metrics_b = tracker(store)
    await replica_a.observe("m", "fp_1")
    await replica_a.observe("m", "fp_1")  # counted in A
    await replica_b.observe("m", "fp_2")
    await replica_a.flush()
    state = await store.fingerprints("m")
    assert state is not None and state.current == "fp_2"
    assert changes(metrics_a) == (0, 0)
    assert changes(metrics_b) == (1, 0)
    assert not replica_a.counted("m", "fp_1")  # A records its next answer at once


async def test_an_alternating_model_shows_in_the_gauge() -> None:
    store = MemoryStore()
    metrics = Metrics(CollectorRegistry())
    fingerprints = FingerprintTracker(
        store, metrics, FingerprintPolicy.FOLLOW, 0.0, Clock(), 60.0, flap_window=600.0
    )
    for fingerprint in ("fp_1", "fp_2", "fp_1", "fp_2", "fp_1"):
        await fingerprints.observe("m", fingerprint)
    state = await store.fingerprints("m")
    assert fingerprints.acceptable("m", state) == ["fp_1", "fp_2"]
    assert metrics.alternation.labels("m")._value.get() == 1
    assert changes(metrics) == (4, 3)
