"""A Redis store written by a version before the routed bound names routed lineages
(`MODEL@fleet-…`) in `{prefix}models`: there they counted against MODELS_KEPT, so a keep round
drew real models' records out in their place, and no ROUTED_KEPT bound ever trimmed them. A keep
round now moves them to `{prefix}routed` first, idempotently, with several replicas at once."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from proxy.core.fingerprints import MODELS_KEPT, ROUTED_KEPT
from proxy.core.routes import FLEET, FLEET_DIGITS
from proxy.store import open_store
from proxy.store.redis import RedisStore

PLAIN = [f"model-{number:05d}" for number in range(MODELS_KEPT)]
ROUTED = [f"model-00000{FLEET}{number:0{FLEET_DIGITS}x}" for number in range(ROUTED_KEPT + 60)]


async def write_old_layout(client: aioredis.Redis | aioredis.RedisCluster) -> None:
    """Each lineage's record as the observe script writes it, every name in the models index."""
    record = {"first_seen": 1.0, "last_seen": 1.0, "count": 1, "order": 1}
    for lineage in (*PLAIN, *ROUTED):
        digest = hashlib.sha1(lineage.encode(), usedforsecurity=False).hexdigest()
        await client.hset(  # type: ignore[misc]
            f"repro:fp:{{{digest}}}",
            mapping={"model": lineage, "current": "fp", "seen": 1, "fp:fp": orjson.dumps(record)},
        )
    await client.sadd("repro:models", *PLAIN, *ROUTED)  # type: ignore[misc]


async def check_sorted(client: aioredis.Redis | aioredis.RedisCluster, store: RedisStore) -> None:
    models = {name.decode() for name in await client.smembers("repro:models")}  # type: ignore[misc]
    routed = {name.decode() for name in await client.smembers("repro:routed")}  # type: ignore[misc]
    assert models == set(PLAIN)  # was: MODELS_KEPT names drawn at random from both
    assert len(routed) == ROUTED_KEPT  # two replicas trimming at once drew what was over twice
    assert routed <= set(ROUTED)
    for model in PLAIN:
        assert await store.fingerprints(model) is not None
    assert sorted(await store.all_fingerprints()) == sorted((*PLAIN, *routed))


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[tuple[RedisStore, RedisStore, aioredis.Redis]]:
    stores = [await open_store(redis_url) for _ in range(2)]
    client = aioredis.from_url(redis_url)
    try:
        first, second = stores
        assert isinstance(first, RedisStore) and isinstance(second, RedisStore)
        yield first, second, client
    finally:
        await client.aclose()
        for store in stores:
            await store.close()


async def test_replicas_move_the_old_layouts_routed_lineages_out_of_the_models_index(
    replicas: tuple[RedisStore, RedisStore, aioredis.Redis],
) -> None:
    first, second, client = replicas
    await write_old_layout(client)
    await asyncio.gather(first.keep(), second.keep())
    await check_sorted(client, first)
    routed = await client.smembers("repro:routed")  # type: ignore[misc]
    await asyncio.gather(first.keep(), second.keep())  # again: nothing moves, nothing goes
    await check_sorted(client, second)
    assert await client.smembers("repro:routed") == routed  # type: ignore[misc]


async def test_an_older_replica_naming_routed_lineages_with_the_models_is_sorted_again(
    replicas: tuple[RedisStore, RedisStore, aioredis.Redis],
) -> None:
    """In a rolling upgrade an older replica still adds them to the models index: a later round
    that finds it over its bound moves them before it draws models out."""
    first, _, client = replicas
    await first.keep()  # the first round, on an empty store
    await write_old_layout(client)
    await first.keep()
    await check_sorted(client, first)


@pytest.mark.slow  # a three-node cluster takes seconds to form
async def test_a_cluster_store_moves_them_across_nodes(redis_cluster_url: str) -> None:
    """The two indexes sit on slots of their own, perhaps two nodes: no command names both."""
    store = await open_store(redis_cluster_url)
    client = aioredis.RedisCluster.from_url(redis_cluster_url)
    try:
        assert isinstance(store, RedisStore)
        await write_old_layout(client)
        await store.keep()
        await check_sorted(client, store)
    finally:
        await client.aclose()
        await store.close()


async def test_replicas_trimming_at_once_draw_only_what_is_over_the_bound(
    replicas: tuple[RedisStore, RedisStore, aioredis.Redis],
) -> None:
    first, second, client = replicas
    for number in range(MODELS_KEPT + 40):
        await first.observe_fingerprint(f"made-up-{number:05d}", "fp", 1.0)
    await asyncio.gather(first.keep(), second.keep())
    assert await client.scard("repro:models") == MODELS_KEPT  # type: ignore[misc]
    assert len(await second.all_fingerprints()) == MODELS_KEPT
