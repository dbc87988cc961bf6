"""Routed lineages (`<model>@fleet-…`, a client's to invent per request) are bounded apart from
models in each process's fingerprint state (ROUTED_KEPT): the tracker's current fingerprints and
the near-cache's copies of the states. Before, they shared MODELS_KEPT with the models, and
enough of them made every model's state forgotten here too."""

from __future__ import annotations

from typing import cast

from prometheus_client import CollectorRegistry

from proxy.core.fingerprints import MODELS_KEPT, ROUTED_KEPT, Lineages
from proxy.core.policy import FingerprintPolicy
from proxy.core.routes import CHAT, fleet, lineage
from proxy.metrics import Metrics
from proxy.server.fingerprints import FingerprintTracker
from proxy.store.memory import MemoryStore
from proxy.store.near import NearCache
from proxy.store.redis import RedisStore

INVENTED = [lineage("gpt-4o-mini", CHAT, fleet(f"{n:064x}", "")) for n in range(MODELS_KEPT + 8)]


def test_routed_lineages_only_push_out_routed_lineages() -> None:
    kept: Lineages[str] = Lineages()
    kept.put("gpt-4o-mini", "fp")
    for name in INVENTED:
        kept.put(name, "fp_r")
    assert kept.get("gpt-4o-mini") == "fp"
    assert len(kept) == 1 + ROUTED_KEPT
    assert kept.get(INVENTED[-1]) == "fp_r" and kept.get(INVENTED[0]) is None


async def test_the_tracker_keeps_counting_a_models_repeats_whatever_is_routed() -> None:
    """A model forgotten here has each answer recorded in the store, not counted: a write per
    answer, which the invented routings must not bring about."""
    store = MemoryStore()
    metrics = Metrics(CollectorRegistry())
    tracker = FingerprintTracker(store, metrics, FingerprintPolicy.FOLLOW, 0.0, lambda: 100.0, 60.0)
    await tracker.observe("gpt-4o-mini", "fp")
    for name in INVENTED:
        await tracker.observe(name, "fp")
    assert tracker.counted("gpt-4o-mini", "fp")
    assert not tracker.counted(INVENTED[0], "fp")


async def test_the_near_cache_keeps_a_models_state_whatever_is_routed() -> None:
    inner = MemoryStore()
    near = NearCache(inner, cast(RedisStore, None), 1 << 20)
    near.live = True
    for name in ("gpt-4o-mini", *INVENTED):
        await inner.observe_fingerprint(name, "fp", 1.0)
        state, _ = await near.lookup("key", name)
        assert state is not None
    assert near._states.get("gpt-4o-mini") is not None
    assert len(near._states) == 1 + ROUTED_KEPT
