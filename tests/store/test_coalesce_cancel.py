"""The coalescer's leases under cancellation, against a real Redis: a request cancelled while it
waits (for this process's leader, or for another replica's lock) leaves nothing behind that
would hold the next request of its key for the lock timeout."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from proxy.server.coalesce import Coalescer
from proxy.store.redis import RedisStore

TIMEOUT = 60.0  # far beyond any wait of these tests: one that waited it out would fail them


async def test_a_claim_cancelled_while_another_replica_holds_the_lock_is_given_up(
    redis_url: str,
) -> None:
    client = Redis.from_url(redis_url)
    store = RedisStore(client)
    try:
        assert await store.lock("k", "other-replica", TIMEOUT)
        coalescer = Coalescer(store, TIMEOUT)
        lease = coalescer.claim("k")
        assert lease is not None
        waiting = asyncio.create_task(coalescer.lock(lease))
        follower = asyncio.create_task(coalescer.wait("k"))
        await asyncio.sleep(0.05)  # both wait now: one on the replica's lock, one on the claim
        assert not waiting.done() and not follower.done()
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await asyncio.wait_for(follower, 5)  # let go by the cancelled claim, not the timeout
        assert coalescer.claim("k") is not None  # the next request leads
        assert await store.locked("k")  # the other replica's lock is not ours to take
    finally:
        await client.aclose()
        await store.close()


async def test_a_leader_cancelled_between_its_lock_and_its_answer_releases_both(
    redis_url: str,
) -> None:
    client = Redis.from_url(redis_url)
    store = RedisStore(client)
    upstream = asyncio.Event()
    try:
        coalescer = Coalescer(store, TIMEOUT)

        async def lead() -> None:
            lease = coalescer.claim("k")
            assert lease is not None and lease.token is not None
            try:
                _, _, lease.held = await store.lookup_or_lock("k", None, lease.token, TIMEOUT)
                await upstream.wait()  # the upstream call, cancelled midway
            finally:
                await coalescer.release(lease)

        leader = asyncio.create_task(lead())
        for _ in range(100):
            if await store.locked("k"):
                break
            await asyncio.sleep(0.01)
        assert await store.locked("k")
        follower = asyncio.create_task(coalescer.wait("k"))
        await asyncio.sleep(0)
        leader.cancel()
        await asyncio.gather(leader, return_exceptions=True)
        await asyncio.wait_for(follower, 5)
        assert not await store.locked("k")
        assert coalescer.claim("k") is not None
    finally:
        await client.aclose()
        await store.close()
