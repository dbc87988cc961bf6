"""The walks over every entry of Redis (stats, purge, export) hold a bounded number of names,
however many entries Redis holds: they used to remember each, to skip SCAN's repeats."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from proxy.store import open_store
from proxy.store.redis import RedisStore

ENTRIES = 20_000


@pytest.fixture
async def filled(redis_url: str) -> AsyncIterator[RedisStore]:
    store = await open_store(redis_url)
    assert isinstance(store, RedisStore)
    client = aioredis.from_url(redis_url)
    async with client.pipeline(transaction=False) as pipe:
        for number in range(ENTRIES):
            pipe.hset(f"repro:e:{{{number:064x}}}", "fp", b"v")
        await pipe.execute()
    await client.aclose()
    try:
        yield store
    finally:
        await store.close()


async def walked(store: RedisStore, remember: int) -> tuple[int, int]:
    """Names the walk gave, and the most memory it held meanwhile."""
    gc.collect()
    tracemalloc.start()
    try:
        names = 0
        async for batch in store._scanned(remember):
            names += len(batch)
        return names, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_a_walk_gives_every_name_and_remembers_a_bounded_number(
    filled: RedisStore,
) -> None:
    unbounded_names, unbounded_peak = await walked(filled, ENTRIES)
    bounded_names, bounded_peak = await walked(filled, 100)
    assert unbounded_names == bounded_names == ENTRIES
    assert unbounded_peak - bounded_peak > ENTRIES * 100  # each name held cost over 100 bytes
    assert (await filled.usage()).entries == ENTRIES
