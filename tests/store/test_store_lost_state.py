"""What the proxy does when Redis loses the state replicas share while they run (a restart
without persistence, a FLUSHALL, an eviction): a running replica offers its secret again, so
that a replica started afterwards shares its cache, and adopts another it finds there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from proxy.server.secret import Secret
from proxy.store import open_store
from proxy.store.base import Store
from tests.fixtures_redis import running_redis


@pytest.fixture
async def shared(redis_url: str) -> AsyncIterator[tuple[Store, aioredis.Redis]]:
    store = await open_store(redis_url)
    raw = aioredis.Redis.from_url(redis_url)
    yield store, raw
    await raw.aclose()
    await store.close()


async def test_a_secret_the_store_lost_is_offered_again_and_a_late_replica_shares_it(
    shared: tuple[Store, aioredis.Redis],
) -> None:
    store, raw = shared
    running = Secret(store, None)
    await running.settle()
    before = running.value
    await raw.flushall()
    await running.keep()
    late = Secret(store, None)
    await late.settle()
    assert running.value == before
    assert late.value == running.value
    assert await raw.get("repro:secret") == before


async def test_a_replica_that_finds_another_secret_adopts_it(
    shared: tuple[Store, aioredis.Redis],
) -> None:
    store, raw = shared
    running = Secret(store, None)
    await running.settle()
    running.tenant((("authorization", "Bearer sk-alice"),))
    assert len(running.tenants) == 1
    await raw.flushall()
    late = Secret(store, None)  # started while the store was empty: its own secret won
    await late.settle()
    assert late.value != running.value
    await running.keep()
    assert running.value == late.value
    assert len(running.tenants) == 0  # no partition of the old secret is served from memory


async def test_a_long_secret_is_offered_again_as_the_store_held_it(
    shared: tuple[Store, aioredis.Redis],
) -> None:
    """Used hashed (longer than an HMAC block), but written back as it was: otherwise replicas
    of the old secret and those reading the new one would key differently."""
    store, raw = shared
    long = b"s" * 100
    await raw.set("repro:secret", long)
    running = Secret(store, None)
    await running.settle()
    await raw.flushall()
    await running.keep()
    assert await raw.get("repro:secret") == long
    late = Secret(store, None)
    await late.settle()
    assert late.value == running.value


async def test_a_fixed_secret_is_never_offered(shared: tuple[Store, aioredis.Redis]) -> None:
    store, raw = shared
    fixed = Secret(store, "s")
    await fixed.settle()
    await fixed.keep()
    assert await raw.get("repro:secret") is None


async def test_a_failing_store_leaves_the_secret_as_it_is(tmp_path: Path) -> None:
    with running_redis(tmp_path) as server:
        store = await open_store(server.url)
        running = Secret(store, None)
        await running.settle()
        before = running.value
    await running.keep()  # the server is gone
    assert running.value == before
    assert not running.provisional
    await store.close()
