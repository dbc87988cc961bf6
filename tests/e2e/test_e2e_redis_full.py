"""End to end: a Redis that is out of memory (maxmemory, noeviction) refuses every write, fill
locks included, but still answers reads: the proxy keeps serving HITs, and a miss still gets
the upstream's answer, unstored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from openai import OpenAI
from redis.asyncio import Redis as AsyncRedis

from proxy.store.base import Write
from proxy.store.redis import RedisStore
from tests.fixtures_procs import Proxy, ProxyFactory, Sim
from tests.fixtures_redis import RedisServer, running_redis

MODEL = "gpt-4o-mini"
FILLER = b"x" * 65536


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own: its memory settings must not reach the session's."""
    with running_redis(tmp_path / "redis") as server:
        yield server


def chat(proxy: Proxy, prompt: str) -> Any:
    with OpenAI(base_url=proxy.v1, api_key="sk-full", max_retries=0) as sdk:
        return sdk.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}]
        )


def fill_up(server: RedisServer) -> None:
    """Cap memory just above what is used, without eviction, and write until Redis says OOM;
    then pull the cap under what is used now, so that buffers freed later (this client's own)
    cannot make room again: every write from then on is refused, even a small lock."""
    with redis.Redis(port=server.port) as client:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", used + 1024 * 1024)
        for n in range(1000):
            try:
                client.set(f"filler:{n}", FILLER)
            except redis.exceptions.OutOfMemoryError:
                break
        else:
            pytest.fail("Redis never ran out of memory")
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 256 * 1024)
    with redis.Redis(port=server.port) as client, pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("one-more", b"1", nx=True, px=1000)


def test_a_full_redis_still_serves_hits_and_misses_reach_the_upstream(
    start_proxy: ProxyFactory, sim: Sim, own_redis: RedisServer
) -> None:
    proxy = start_proxy("--store", own_redis.url, "--near-cache", "0")
    assert chat(proxy, "Stored before Redis filled up.").headers["X-Repro-Cache"] == "MISS"
    fill_up(own_redis)

    hits = [chat(proxy, "Stored before Redis filled up.") for _ in range(4)]
    misses = [chat(proxy, f"New question {n}.") for n in range(4)]
    after = chat(proxy, "Stored before Redis filled up.")

    assert [r.headers["X-Repro-Cache"] for r in [*hits, after]] == ["HIT"] * 5
    assert [r.headers["X-Repro-Cache"] for r in misses] == ["MISS"] * 4
    assert all(r.parse().choices[0].message.content for r in misses)
    errors = proxy.store_errors()
    assert errors.get("get", 0) == 0  # every read was answered
    assert errors["put"] == 4  # every miss's write was refused, and counted once
    assert chat(proxy, "New question 0.").headers["X-Repro-Cache"] == "MISS"  # nothing stored


async def test_a_refused_fill_lock_is_not_held_and_the_read_beside_it_stands(
    own_redis: RedisServer,
) -> None:
    store = RedisStore(AsyncRedis.from_url(own_redis.url))
    try:
        await store.put(Write("stored", "fp", b"answer", 0))
        fill_up(own_redis)
        assert await store.lookup_or_lock("stored", None, "leader", 30) == (
            None,
            {"fp": b"answer"},
            False,
        )
        assert await store.lookup_or_lock("empty", None, "leader", 30) == (None, {}, False)
        assert not await store.locked("empty")
    finally:
        await store.close()
