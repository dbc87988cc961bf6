"""What the near-cache remembers of a read that was on its way while invalidations came in,
against a real Redis and its pub/sub feed. A gate holds one read open, so the race is exact."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from proxy.core.fingerprints import ModelFingerprints
from proxy.store.base import Labels, Selector, Store, StoreError, Write
from proxy.store.near import NearCache
from proxy.store.redis import RedisStore
from proxy.store.wrapper import StoreWrapper
from tests.faultproxy import FaultProxy
from tests.fixtures_redis import RedisServer

CHANNEL = "near-race"


class Gated(StoreWrapper):
    """Counts the lookups that reach Redis, and holds their answers until `gate` is set."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.reads: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def lookup(
        self, key: str, model: str | None
    ) -> tuple[ModelFingerprints | None, dict[str, bytes]]:
        self.reads.append(key)
        found = await self.inner.lookup(key, model)
        await self.gate.wait()
        return found


async def until(check: Callable[[], bool]) -> None:
    for _ in range(250):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached within 5 s")


@pytest.fixture
async def near(redis_url: str) -> AsyncIterator[tuple[NearCache, Gated, RedisStore]]:
    """A near-cache over a gated store, and another replica's store writing to the same Redis."""
    own = RedisStore(Redis.from_url(redis_url), invalidations=CHANNEL)
    other = RedisStore(Redis.from_url(redis_url), invalidations=CHANNEL)
    gated = Gated(own)
    cache = NearCache(gated, own, 1 << 20)
    listening = asyncio.ensure_future(cache.run())
    try:
        await until(lambda: cache.live)
        await other.observe_fingerprint("m", "fp", 1.0)
        for key in ("q", "other"):
            await other.put(Write(key, "fp", b"answer " + key.encode(), 0))
        yield cache, gated, other
    finally:
        listening.cancel()
        await own.close()
        await other.close()


async def held_read(
    cache: NearCache, gated: Gated, write: Callable[[], Awaitable[object]]
) -> list[str]:
    """Read `q`, and hold Redis's answer while `write` runs and its news arrives; then read `q`
    again. The keys that reached Redis."""
    gated.gate.clear()
    reading = asyncio.ensure_future(cache.lookup("q", "m"))
    await until(lambda: gated.reads == ["q"])
    await asyncio.sleep(0.05)  # Redis has answered; the answer waits at the gate
    await write()
    await asyncio.sleep(0.2)  # its announcement has reached this process
    gated.gate.set()
    state, values = await reading
    assert state is not None and state.current == "fp"
    assert values == {"fp": b"answer q"}  # read before the write
    await cache.lookup("q", "m")
    return gated.reads


async def test_a_write_to_another_key_does_not_stop_a_read_being_remembered(
    near: tuple[NearCache, Gated, RedisStore],
) -> None:
    """Every replica's writes reach every near-cache: a busy cluster must not keep it from
    remembering what it reads."""
    cache, gated, other = near
    reads = await held_read(cache, gated, lambda: other.put(Write("other", "fp", b"new", 0)))
    assert reads == ["q"]  # the second read came from memory


async def test_a_write_to_the_key_itself_makes_the_read_forgotten(
    near: tuple[NearCache, Gated, RedisStore],
) -> None:
    cache, gated, other = near
    reads = await held_read(cache, gated, lambda: other.put(Write("q", "fp", b"rewritten", 0)))
    assert reads == ["q", "q"]  # not remembered: the read may hold the old answer
    assert (await cache.lookup("q", "m"))[1] == {"fp": b"rewritten"}


async def test_a_rotation_makes_the_read_forgotten(
    near: tuple[NearCache, Gated, RedisStore],
) -> None:
    cache, gated, other = near
    reads = await held_read(cache, gated, lambda: other.observe_fingerprint("m", "fp2", 2.0))
    assert reads == ["q", "q"]


async def test_a_subscription_hears_messages_and_raises_when_cut(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    store = RedisStore(Redis.from_url(redis_url))
    heard: list[str] = []
    ready = asyncio.Event()
    listening = asyncio.ensure_future(store.listen("chan", ready.set, heard.append))
    try:
        await asyncio.wait_for(ready.wait(), timeout=5)
        await client.publish("other", "not for us")
        await client.publish("chan", "one")
        await client.publish("chan", b"two\x00bytes")
        await until(lambda: len(heard) == 2)
        assert heard == ["one", "two\x00bytes"]
        assert await client.client_kill_filter(_type="pubsub") == 1
        with pytest.raises(StoreError, match="redis listen failed"):
            await asyncio.wait_for(listening, timeout=5)
    finally:
        listening.cancel()
        await store.close()
        await client.aclose()


async def test_the_near_cache_forgets_on_a_lost_subscription_and_comes_back(
    redis_url: str,
) -> None:
    """The feed is never reconnected unseen: messages sent while it was down are lost, so the
    memory goes with it until a new subscription is confirmed."""
    client = Redis.from_url(redis_url)
    store = RedisStore(Redis.from_url(redis_url), invalidations="near-test")
    near = NearCache(store, store, 1 << 20)
    running = asyncio.ensure_future(near.run())
    try:
        await until(lambda: near.live)
        assert await client.client_kill_filter(_type="pubsub") == 1
        await until(lambda: not near.live)
        await until(lambda: near.live)  # resubscribed after RESUBSCRIBE_AFTER
    finally:
        running.cancel()
        await store.close()
        await client.aclose()


@pytest.mark.parametrize("protocol", [2, 3])
async def test_another_replicas_write_reaches_the_near_cache_over_either_protocol(
    redis_url: str, protocol: int
) -> None:
    """The feed is a bare redis-py connection: under RESP3 its messages arrive as pushes, which
    it must read too, or the near-cache would serve an overwritten answer forever."""
    url = f"{redis_url}?protocol={protocol}"
    own = RedisStore(Redis.from_url(url), invalidations=CHANNEL)
    other = RedisStore(Redis.from_url(url), invalidations=CHANNEL)
    cache = NearCache(own, own, 1 << 20)
    listening = asyncio.ensure_future(cache.run())
    try:
        await until(lambda: cache.live)
        await other.put(Write("k", "fp", b"first", 0))
        assert (await cache.lookup("k", None))[1] == {"fp": b"first"}  # now held near
        await other.put(Write("k", "fp", b"second", 0))
        answers: list[dict[str, bytes]] = []

        async def fresh() -> None:
            for _ in range(250):
                answers.append((await cache.lookup("k", None))[1])
                if answers[-1] == {"fp": b"second"}:
                    return
                await asyncio.sleep(0.02)

        await fresh()  # only the write's news can make the near-cache ask Redis again
        assert answers[-1] == {"fp": b"second"}
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await own.close()
        await other.close()


async def test_a_subscription_that_goes_silent_is_lost_and_its_memory_with_it(
    redis_server: RedisServer,
) -> None:
    """A feed can die without a reset ever arriving (a network partition, a firewall or NAT
    dropping an idle connection): invalidations then vanish unseen, and memory would serve
    answers other replicas replaced or purged for as long as the process runs. A quiet feed is
    pinged; one that does not answer counts as lost, as a cut one does."""
    other = RedisStore(Redis.from_url(redis_server.url), invalidations="near-silent")
    with FaultProxy(redis_server.port) as faults:
        url = f"redis://127.0.0.1:{faults.port}/0"
        own = RedisStore(Redis.from_url(url), invalidations="near-silent", deadline=1.0)
        cache = NearCache(own, own, 1 << 20, heartbeat=0.2)
        running = asyncio.ensure_future(cache.run())
        try:
            await until(lambda: cache.live)
            await other.observe_fingerprint("m", "fp", 1.0)
            await other.put(Write("q", "fp", b"old", 0))
            await cache.lookup("q", "m")
            assert (await cache.lookup("q", "m"))[1] == {"fp": b"old"}
            faults.set_mode("blackhole")
            await other.put(Write("q", "fp", b"replaced", 0))  # its news is swallowed
            await until(lambda: not cache.live)
            faults.set_mode("pass")
            await until(lambda: cache.live)
            assert (await cache.lookup("q", "m"))[1] == {"fp": b"replaced"}
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await own.close()
            await other.close()


@pytest.mark.parametrize("protocol", [2, 3])
async def test_a_quiet_subscription_that_answers_its_pings_stays_live(
    redis_url: str, protocol: int
) -> None:
    """Silence alone is no loss: a quiet channel is pinged, over either protocol, and stays."""
    url = f"{redis_url}?protocol={protocol}"
    store = RedisStore(Redis.from_url(url), invalidations="near-quiet")
    cache = NearCache(store, store, 1 << 20, heartbeat=0.25)
    running = asyncio.ensure_future(cache.run())
    lost: list[bool] = []
    try:
        await until(lambda: cache.live)
        for _ in range(60):  # six heartbeats
            await asyncio.sleep(0.025)
            lost.append(not cache.live)
        assert not any(lost)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await store.close()


async def test_a_purge_is_forgotten_when_it_answers_not_when_its_news_arrives(
    redis_url: str,
) -> None:
    """Its own announcement reaches this process after the purge has answered: until then a
    HIT served what an operator was told is gone. The feed is stopped here, so nothing but the
    purge itself can make the memory forget."""
    own = RedisStore(Redis.from_url(redis_url), invalidations=CHANNEL)
    cache = NearCache(own, own, 1 << 20)
    listening = asyncio.ensure_future(cache.run())
    try:
        await until(lambda: cache.live)
        await own.observe_fingerprint("m", "fp", 1.0)
        await own.put(Write("q", "fp", b"answer", 0))
        await own.put(Write("kept", "fp", b"kept", 0, Labels(namespace="other")))
        assert (await cache.lookup("q", "m"))[1] == {"fp": b"answer"}  # now in memory
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        assert cache.live  # no news from here on, and the memory still serves
        assert await cache.purge(Selector(namespace="other"), dry_run=True) == 1
        assert (await cache.lookup("q", "m"))[1] == {"fp": b"answer"}  # a dry run removes nothing
        assert await cache.purge(Selector(namespace=""), dry_run=False) == 1
        assert (await cache.lookup("q", "m"))[1] == {}
        assert (await cache.lookup("kept", "m"))[1] == {"fp": b"kept"}
    finally:
        listening.cancel()
        await own.close()


class Stalling(RedisStore):
    """A store whose walk over the entries fails after its first batch, as Redis stalling in
    the middle of a long purge makes it."""

    async def _scanned(self, remember: int = 0) -> AsyncIterator[list[bytes]]:
        async for batch in super()._scanned():
            yield batch
            raise StoreError("redis purge: the store stalled")


async def test_a_purge_that_fails_part_way_is_forgotten_and_announced(redis_url: str) -> None:
    """What it deleted before failing stayed in every near-cache, its own too: the news was
    sent once, after the last batch, and the memory forgot only once the purge answered."""
    own = Stalling(Redis.from_url(redis_url), invalidations=CHANNEL)
    cache = NearCache(own, own, 1 << 20)
    listening = asyncio.ensure_future(cache.run())
    other = Redis.from_url(redis_url)
    feed = other.pubsub()
    try:
        await until(lambda: cache.live)
        await feed.subscribe(CHANNEL)
        await own.observe_fingerprint("m", "fp", 1.0)
        await own.put(Write("q", "fp", b"answer", 0))
        assert (await cache.lookup("q", "m"))[1] == {"fp": b"answer"}  # now in memory
        with pytest.raises(StoreError):
            await cache.purge(Selector(), dry_run=False)
        assert await other.exists("repro:e:{q}") == 0  # deleted before the failure
        assert (await cache.lookup("q", "m"))[1] == {}
        heard = []
        for _ in range(50):
            message = await feed.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                heard.append(message["data"])
            if b"*" in heard:
                break
        assert b"*" in heard
    finally:
        listening.cancel()
        await feed.aclose()
        await other.aclose()
        await own.close()
