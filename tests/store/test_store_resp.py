"""The lean RESP connection under the batcher, against real redis-servers: credentials and
database from the URL, replies in order when callers leave, and recovery from a silent or
dropped connection."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from proxy.store.batch import Batcher
from proxy.store.near import NearCache
from proxy.store.redis import RedisStore
from proxy.store.resp import Link, Wire
from tests.fixtures_redis import RedisServer, running_redis


async def test_credentials_and_database_come_from_the_url(tmp_path: Path) -> None:
    with running_redis(tmp_path) as server:
        with redis.Redis(port=server.port) as admin:
            admin.acl_setuser(
                "alice", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"]
            )
            admin.acl_setuser("default", enabled=False)  # from now on nothing works unnamed
        client = Redis.from_url(f"redis://alice:s3cret@127.0.0.1:{server.port}/3")
        batcher = Batcher(client)
        try:
            assert Link.of(client) is not None
            assert await batcher.call("SET", "k", "v") is True  # redis-py's callback shaped it
            with redis.Redis(port=server.port, username="alice", password="s3cret", db=3) as db3:
                assert db3.get("k") == b"v"
        finally:
            await batcher.close()
            await client.aclose()


async def test_replies_stay_in_order_when_a_caller_leaves(batched: tuple[Redis, Batcher]) -> None:
    client, batcher = batched
    await client.mset({"a": "1", "b": "2", "c": "3"})
    first, gone, last = (batcher.send("GET", name) for name in "abc")
    gone.cancel()
    assert (await first, await last) == (b"1", b"3")
    assert await batcher.call("HGETALL", "missing") == {}


async def test_a_silent_server_is_cut_off_and_the_next_batch_connects_again(
    tmp_path: Path,
) -> None:
    with running_redis(tmp_path) as server:
        client = Redis.from_url(server.url, socket_timeout=0.3, socket_connect_timeout=0.3)
        batcher = Batcher(client)
        try:
            assert await batcher.call("PING") is True
            os.kill(server.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(RedisConnectionError):
                    await asyncio.wait_for(batcher.call("GET", "k"), timeout=5)
                assert time.monotonic() - started < 2  # cut off after 0.3 s of silence
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert await batcher.call("SET", "k", "after") is True
            assert await client.get("k") == b"after"
        finally:
            await batcher.close()
            await client.aclose()


async def test_a_dropped_connection_is_replaced(batched: tuple[Redis, Batcher]) -> None:
    client, batcher = batched
    await batcher.call("SET", "k", "v")
    killed = await client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1  # the batcher's own connection
    await asyncio.sleep(0.1)  # the close reaches this process
    assert await batcher.call("GET", "k") == b"v"


def test_only_plain_tcp_standalone_clients_get_a_link(tmp_path: Path) -> None:
    assert Link.of(Redis.from_url("redis://127.0.0.1:6379/0")) is not None
    assert Link.of(Redis.from_url("rediss://127.0.0.1:6379/0")) is None
    assert Link.of(Redis(unix_socket_path=str(tmp_path / "redis.sock"))) is None


async def test_a_subscription_hears_messages_and_raises_when_cut(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    link = Link.of(client)
    assert link is not None
    heard: list[bytes] = []
    ready = asyncio.Event()
    listening = asyncio.ensure_future(link.listen("chan", ready.set, heard.append))
    try:
        await asyncio.wait_for(ready.wait(), timeout=5)
        await client.publish("other", "not for us")
        await client.publish("chan", "one")
        await client.publish("chan", b"two\x00bytes")
        for _ in range(50):
            if len(heard) == 2:
                break
            await asyncio.sleep(0.02)
        assert heard == [b"one", b"two\x00bytes"]
        assert await client.client_kill_filter(_type="pubsub") == 1
        with pytest.raises(RedisConnectionError, match="subscription lost"):
            await asyncio.wait_for(listening, timeout=5)
    finally:
        listening.cancel()
        await client.aclose()


async def test_the_near_cache_forgets_on_a_lost_subscription_and_comes_back(
    redis_url: str,
) -> None:
    client = Redis.from_url(redis_url)
    store = RedisStore(Redis.from_url(redis_url), invalidations="near-test")
    near = NearCache(store, store, 1 << 20)
    running = asyncio.ensure_future(near.run())

    async def until(check: Callable[[], bool]) -> bool:
        for _ in range(150):
            if check():
                return True
            await asyncio.sleep(0.02)
        return False

    try:
        assert await until(lambda: near.live)
        assert await client.client_kill_filter(_type="pubsub") == 1
        assert await until(lambda: not near.live)  # memory is not trusted without the feed
        assert await until(lambda: near.live)  # resubscribed after RESUBSCRIBE_AFTER
    finally:
        running.cancel()
        await store.close()
        await client.aclose()


async def test_a_reply_that_cannot_be_shaped_fails_only_its_caller(
    redis_server: RedisServer,
) -> None:
    def broken(reply: object) -> object:
        raise ValueError("cannot shape")

    loop = asyncio.get_running_loop()
    _, wire = await loop.create_connection(
        lambda: Wire(1.0, {"ECHO": broken}), "127.0.0.1", redis_server.port
    )
    try:
        shaped, plain = loop.create_future(), loop.create_future()
        wire.write([(("ECHO", "a"), {}, shaped), (("PING",), {}, plain)])
        with pytest.raises(ValueError, match="cannot shape"):
            await shaped
        assert await plain == b"PONG"  # no callback for PING here: the raw reply
    finally:
        assert wire.transport is not None
        wire.transport.close()
