"""Per-model state in a process stays bounded whatever model names the upstream answers for
(see MODELS_KEPT): the tracker's current fingerprints, the memory store's records, the
near-cache's copies of them, and the probe's list of models to ask for."""

from __future__ import annotations

from typing import cast

from prometheus_client import CollectorRegistry

from proxy.core.fingerprints import MAX_MODEL_NAME, MODELS_KEPT
from proxy.core.policy import FingerprintPolicy
from proxy.core.routes import CHAT
from proxy.metrics import Metrics
from proxy.server.fingerprints import FingerprintTracker
from proxy.server.probe import Prober
from proxy.store.memory import MemoryStore
from proxy.store.near import NearCache
from proxy.store.redis import RedisStore
from proxy.upstream.client import Upstream


def tracker(store: MemoryStore) -> FingerprintTracker:
    metrics = Metrics(CollectorRegistry())
    return FingerprintTracker(store, metrics, FingerprintPolicy.FOLLOW, 0.0, lambda: 100.0, 60.0)


async def test_the_memory_store_forgets_the_model_used_least_recently() -> None:
    store = MemoryStore(max_models=3)
    for model in ("a", "b", "c"):
        await store.observe_fingerprint(model, "fp", 1.0)
    assert (await store.lookup("key", "a"))[0] is not None  # a lookup uses "a": "b" is oldest
    await store.observe_fingerprint("d", "fp", 2.0)
    assert sorted(await store.all_fingerprints()) == ["a", "c", "d"]
    assert await store.fingerprints("b") is None
    assert await store.rotations("b") == ()


async def test_the_tracker_remembers_current_fingerprints_of_a_bounded_number_of_models() -> None:
    """A model forgotten here is not lost: its next answer is recorded in the store rather
    than counted, as after a restart."""
    store = MemoryStore(max_models=MODELS_KEPT + 10)
    fingerprints = tracker(store)
    models = [f"m{number}" for number in range(MODELS_KEPT + 10)]
    for model in models:
        await fingerprints.observe(model, "fp")
    assert not fingerprints.counted(models[0], "fp")
    assert fingerprints.counted(models[-1], "fp")
    assert len(await store.all_fingerprints()) == MODELS_KEPT + 10


async def test_the_near_cache_holds_the_states_of_a_bounded_number_of_models() -> None:
    inner = MemoryStore(max_models=MODELS_KEPT + 10)
    near = NearCache(inner, cast(RedisStore, None), 1 << 20)
    near.live = True
    for number in range(MODELS_KEPT + 10):
        model = f"m{number}"
        await inner.observe_fingerprint(model, "fp", 1.0)
        state, _ = await near.lookup("key", model)
        assert state is not None
    assert len(near._states) == MODELS_KEPT
    assert near._states.get("m0") is None
    assert near._states.get(f"m{MODELS_KEPT + 9}") is not None


def test_the_probe_never_lists_a_name_longer_than_any_model() -> None:
    """The proxy keeps nothing for such a model (MAX_MODEL_NAME): the probe would otherwise
    hold the names of its 64 models, each as long as a request body allows."""
    store = MemoryStore()
    prober = Prober(
        cast(Upstream, None),
        tracker(store),
        interval=1.0,
        api_key="sk-probe",
        seed=0,
        clock=lambda: 100.0,
    )
    prober.requested("x" * (MAX_MODEL_NAME + 1), CHAT)
    prober.answered("y" * (MAX_MODEL_NAME + 1))
    prober.requested("gpt-4o-mini", CHAT)
    assert prober.due() == [("gpt-4o-mini", CHAT)]
    assert prober._answered == {}
