"""What the proxy does when Redis loses the state replicas share while they run (a restart
without persistence, a FLUSHALL, an eviction): a running replica offers its secret and its
compression dictionary again, so that a replica started afterwards shares its cache, and adopts
another it finds there; its near-cache learns of the flush and stops serving what is gone; the
fingerprint state is learnt again from the next answers."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from unittest.mock import ANY

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from proxy.core.codec import Codec
from proxy.core.policy import FingerprintPolicy
from proxy.metrics import Metrics
from proxy.server import keep
from proxy.server.dictionary import Dictionaries
from proxy.server.fingerprints import FingerprintTracker
from proxy.server.secret import Secret
from proxy.store import open_store
from proxy.store.base import Store, Write
from proxy.store.encrypted import EncryptedStore, parse_keys
from proxy.store.near import NearCache
from proxy.store.redis import RedisStore
from tests.fixtures_redis import running_redis
from tests.store.test_store_dictionary import SAMPLES, entry, trained
from tests.store.test_store_near import until

FOLLOW = FingerprintPolicy.FOLLOW


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


async def dictionary_in_use(store: Store, first: int = 0) -> tuple[Dictionaries, Codec]:
    """A replica's dictionaries and codec, once it has trained and shared a dictionary."""
    codec = Codec(level=1, samples=SAMPLES)
    dictionaries = Dictionaries(store, codec, SAMPLES, time.monotonic)
    await trained(dictionaries, codec, first)
    return dictionaries, codec


async def test_a_dictionary_the_store_lost_is_offered_again_and_a_late_replica_reads_with_it(
    shared: tuple[Store, aioredis.Redis],
) -> None:
    store, raw = shared
    running, codec = await dictionary_in_use(store)
    await raw.flushall()
    packed = codec.pack(entry(500))  # written after the flush, naming the lost dictionary
    await running.keep()
    late = Codec(level=1, samples=SAMPLES)
    await Dictionaries(store, late, SAMPLES, time.monotonic).settle()
    assert late.dictionary == codec.dictionary
    assert late.unpack(packed) == entry(500)


async def test_a_sealed_dictionary_is_offered_again_sealed(redis_url: str) -> None:
    """Under --encryption-key the dictionary goes back as it came: sealed, never in the clear."""
    keys = parse_keys(base64.b64encode(bytes(32)).decode())
    store = EncryptedStore(await open_store(redis_url), keys)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        running, codec = await dictionary_in_use(store)
        await raw.flushall()
        await running.keep()
        stored = await raw.get("repro:dictionary")
        assert stored is not None and not stored.startswith(b"\x37\xa4\x30\xec")
        late = Codec(level=1, samples=SAMPLES)
        await Dictionaries(store, late, SAMPLES, time.monotonic).settle()
        assert late.dictionary == codec.dictionary
    finally:
        await raw.aclose()
        await store.close()


async def test_a_replica_that_finds_another_dictionary_adopts_it_and_reads_both(
    shared: tuple[Store, aioredis.Redis],
) -> None:
    store, raw = shared
    running, codec = await dictionary_in_use(store)
    old = codec.pack(entry(1))
    await raw.flushall()
    _, late = await dictionary_in_use(store, first=1000)  # started on the empty store: its own
    assert late.dictionary != codec.dictionary
    await running.keep()
    assert codec.dictionary == late.dictionary
    assert codec.unpack(old) == entry(1)  # what it wrote before is still read
    assert late.unpack(codec.pack(entry(2))) == entry(2)


async def test_a_replica_without_a_dictionary_offers_none(
    shared: tuple[Store, aioredis.Redis],
) -> None:
    store, raw = shared
    await Dictionaries(store, Codec(level=1, samples=SAMPLES), SAMPLES, time.monotonic).keep()
    assert await raw.get("repro:dictionary") is None


@pytest.fixture
async def near(redis_url: str) -> AsyncIterator[tuple[NearCache, aioredis.Redis]]:
    """A near-cache listening to a real Redis, holding one stored answer and its model's state."""
    backend = RedisStore(aioredis.Redis.from_url(redis_url), invalidations="lost-state")
    await backend.record(Write("q", "fp", b"answer", 0, model="m", now=1.0))  # before listening:
    cache = NearCache(backend, backend, 1 << 20)  # no news of it is on its way
    listening = asyncio.ensure_future(cache.run())
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await until(lambda: cache.live)
        await cache.keep()  # the store's generation, as the proxy's first round learns it
        assert await cache.lookup("q", "m") == (ANY, {"fp": b"answer"})
        assert "q" in cache._entries  # remembered: the next HIT would come from memory
        yield cache, raw
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await raw.aclose()
        await backend.close()


async def test_after_a_flush_the_near_cache_stops_serving_what_redis_lost(
    near: tuple[NearCache, aioredis.Redis],
) -> None:
    cache, raw = near
    await raw.flushall()
    await cache.keep()
    state, values = await cache.lookup("q", "m")
    assert (state, values) == (None, {})


async def test_without_a_flush_the_near_cache_keeps_what_it_holds(
    near: tuple[NearCache, aioredis.Redis],
) -> None:
    """The round that detects a flush must not empty memory every time: HITs would then go
    to Redis after each one."""
    cache, raw = near
    await cache.keep()
    await raw.delete("repro:e:{q}")  # unannounced: only memory still has it
    assert (await cache.lookup("q", "m"))[1] == {"fp": b"answer"}


async def test_a_replica_that_flushes_and_writes_first_still_empties_the_others(
    near: tuple[NearCache, aioredis.Redis], redis_url: str
) -> None:
    """Whoever marks the store first after a flush, every near-cache sees a new generation."""
    cache, raw = near
    other = RedisStore(aioredis.Redis.from_url(redis_url))
    try:
        await raw.flushall()
        await NearCache(other, other, 1 << 20).keep()  # another replica's round came first
        await cache.keep()
    finally:
        await other.close()
    assert await cache.lookup("q", "m") == (None, {})


async def test_a_failing_store_leaves_the_near_cache_to_its_subscription(tmp_path: Path) -> None:
    with running_redis(tmp_path) as server:
        backend = RedisStore(aioredis.Redis.from_url(server.url), invalidations="lost-state")
        cache = NearCache(backend, backend, 1 << 20)
        await cache.keep()
    await cache.keep()  # the server is gone: no exception, nothing else to do
    await backend.close()


async def test_fingerprint_records_lost_mid_rotation_are_learnt_again(
    shared: tuple[Store, aioredis.Redis],
) -> None:
    """Mid-rotation (fp1 current, fp2 in its grace), the records go: nothing is servable
    until an answer tells the current fingerprint again, then only that one is."""
    store, raw = shared
    tracker = FingerprintTracker(store, Metrics(CollectorRegistry()), FOLLOW, 60.0, lambda: 10.0)
    await tracker.observe("m", "fp2")
    await tracker.observe("m", "fp1")
    state = await store.fingerprints("m")
    assert tracker.acceptable("m", state) == ["fp1", "fp2"]
    await raw.flushall()
    assert tracker.acceptable("m", await store.fingerprints("m")) == ()
    await tracker.observe("m", "fp1")  # what this process knew to be current: not counted,
    relearnt = await store.fingerprints("m")  # written at once, else every lookup would miss
    assert relearnt is not None and relearnt.current == "fp1"
    assert tracker.acceptable("m", relearnt) == ["fp1"]
    assert await store.all_fingerprints() == {"m": relearnt}
    await tracker.close()


async def test_a_hostile_dictionary_written_after_a_flush_is_refused_once_and_ours_kept(
    shared: tuple[Store, aioredis.Redis], caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever writes Redis first after a flush may write anything there: the running replica
    keeps compressing with its own, and says so once, not every round."""
    store, raw = shared
    running, codec = await dictionary_in_use(store)
    number = codec.dictionary
    await raw.flushall()
    await raw.set("repro:dictionary", b"\x37\xa4\x30\xec" + b"\xff" * 64)
    for _ in range(3):
        await running.keep()
    assert codec.dictionary == number
    assert codec.unpack(codec.pack(entry(3))) == entry(3)
    refused = [r for r in caplog.records if "is not one" in r.getMessage()]
    assert len(refused) == 1


async def test_a_generation_key_of_another_type_neither_raises_nor_empties_memory(
    near: tuple[NearCache, aioredis.Redis],
) -> None:
    cache, raw = near
    await raw.delete("repro:generation")
    await raw.hset("repro:generation", "x", "y")
    await cache.keep()  # a WRONGTYPE answer: a failing store, left to the subscription
    await raw.delete("repro:e:{q}")
    assert (await cache.lookup("q", "m"))[1] == {"fp": b"answer"}


class Part:
    def __init__(self, fails: bool) -> None:
        self.fails = fails
        self.rounds = 0

    async def keep(self) -> None:
        self.rounds += 1
        if self.fails:
            raise RuntimeError("a fault of this part")


async def test_a_part_that_fails_stops_neither_the_others_nor_the_next_round() -> None:
    failing, kept = Part(fails=True), Part(fails=False)
    rounds = asyncio.ensure_future(keep.keep([failing, kept], every=0.01))
    try:
        await until(lambda: kept.rounds >= 3)
    finally:
        rounds.cancel()
        await asyncio.gather(rounds, return_exceptions=True)
    assert failing.rounds >= 3


@pytest.mark.parametrize("observed", ["observe", "record"])
async def test_an_evicted_model_index_is_written_again_by_the_next_observation(
    shared: tuple[Store, aioredis.Redis], observed: str
) -> None:
    """The index is read only by the admin routes: under allkeys-lru it goes before the records
    it names, and the admin view would lose every model whose fingerprint never changes."""
    store, raw = shared
    await store.observe_fingerprint("m", "fp", 1.0)
    await raw.delete("repro:models")
    assert await store.all_fingerprints() == {}
    if observed == "observe":
        await store.observe_fingerprint("m", "fp", 2.0, count=3, moves=False)
    else:
        await store.record(Write("q", "fp", b"answer", 0, model="m", now=2.0))
    found = await store.all_fingerprints()
    assert list(found) == ["m"] and found["m"].current == "fp"
