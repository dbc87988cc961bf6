"""Redis keeps the fingerprint records of a bounded number of models: an upstream answering any
model name (a local server that serves one model whatever it is called, or a hostile one) made
each name a record, a rotation list and a member of the index, kept for good. Each round of the
proxy's keep trims the index to MODELS_KEPT and forgets the records of the models it drops."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from proxy.core.fingerprints import MODELS_KEPT
from proxy.store import open_store
from proxy.store.redis import RedisStore

CHANNEL = "repro-test-invalidations"


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[tuple[RedisStore, aioredis.Redis]]:
    store = await open_store(redis_url, CHANNEL)
    assert isinstance(store, RedisStore)
    client = aioredis.from_url(redis_url)
    try:
        yield store, client
    finally:
        await client.aclose()
        await store.close()


async def records(client: aioredis.Redis) -> int:
    return len([name async for name in client.scan_iter(match="repro:fp:*", count=1000)])


async def test_a_round_forgets_the_models_past_the_bound_with_their_records(
    stores: tuple[RedisStore, aioredis.Redis],
) -> None:
    store, client = stores
    for number in range(MODELS_KEPT + 40):
        await store.observe_fingerprint(f"made-up-{number:05d}", "fp", 1.0)
        await store.observe_fingerprint(f"made-up-{number:05d}", "fp_2", 2.0)  # a rotation
    assert await client.scard("repro:models") == MODELS_KEPT + 40
    await store.keep()
    assert await client.scard("repro:models") == MODELS_KEPT
    assert await records(client) == MODELS_KEPT
    rotations = [name async for name in client.scan_iter(match="repro:rot:*", count=1000)]
    assert len(rotations) == MODELS_KEPT
    assert len(await store.all_fingerprints()) == MODELS_KEPT
    await store.keep()  # within the bound: nothing more goes
    assert await records(client) == MODELS_KEPT


async def test_a_forgotten_model_is_learned_again_and_near_caches_hear_of_it(
    stores: tuple[RedisStore, aioredis.Redis],
) -> None:
    store, client = stores
    for number in range(MODELS_KEPT + 1):
        await store.observe_fingerprint(f"made-up-{number:05d}", "fp", 1.0)
    heard: list[str] = []
    async with client.pubsub() as pubsub:
        await pubsub.subscribe(CHANNEL)
        await pubsub.get_message(timeout=1.0)  # the subscription's confirmation
        await store.keep()
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
        assert message is not None
        heard.append(message["data"].decode())
    (gone,) = [m for m in heard if m.startswith("m\x00")]
    model = gone[2:]
    assert await store.fingerprints(model) is None
    seen = await store.observe_fingerprint(model, "fp", 3.0)
    assert seen.new and not seen.changed
    assert await client.scard("repro:models") == MODELS_KEPT + 1


async def test_a_round_on_a_store_that_holds_another_type_there_changes_nothing(
    stores: tuple[RedisStore, aioredis.Redis],
) -> None:
    """The index is whatever Redis holds: a key of another type is left as it is."""
    store, client = stores
    await client.set("repro:models", b"not a set")
    await store.keep()
    assert await client.get("repro:models") == b"not a set"


@pytest.mark.slow  # a three-node cluster takes seconds to form
async def test_a_round_on_a_cluster_forgets_records_on_every_node(redis_cluster_url: str) -> None:
    """The index and each model's keys sit on slots of their own: one command each."""
    store = await open_store(redis_cluster_url)
    assert isinstance(store, RedisStore)
    try:
        models = [f"made-up-{number:05d}" for number in range(MODELS_KEPT + 8)]
        for model in models:
            await store.observe_fingerprint(model, "fp", 1.0)
        await store.keep()
        kept = [model for model in models if await store.fingerprints(model) is not None]
        assert len(kept) == MODELS_KEPT
        assert sorted(await store.all_fingerprints()) == sorted(kept)
    finally:
        await store.close()
