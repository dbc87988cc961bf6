"""Automatic pipelining against a real redis-server: shared round trips, isolated failures,
replies in order, and recovery from a silent or dropped connection."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from proxy.store import open_store
from proxy.store.base import StoreError, StoreTimeout, Write
from proxy.store.batch import MAX_BATCH, Batcher, replies
from proxy.store.guard import GuardedStore
from proxy.store.redis import RedisStore
from tests.fixtures_redis import running_redis


async def _commands_processed(client: Redis) -> int:
    return int((await client.info("stats"))["total_commands_processed"])


async def test_concurrent_commands_share_one_pipeline_and_each_gets_its_reply(
    redis_url: str,
) -> None:
    client = Redis.from_url(redis_url)
    batcher = Batcher(client)
    try:
        await client.mset({f"k{i}": f"v{i}" for i in range(50)})
        connections_before = int((await client.info("stats"))["total_connections_received"])
        got = await asyncio.gather(*(batcher.call("GET", f"k{i}") for i in range(50)))
        assert got == [f"v{i}".encode() for i in range(50)]
        # One pipeline on one connection: the pool needed at most one new one for 50 commands.
        after = int((await client.info("stats"))["total_connections_received"])
        assert after - connections_before <= 1
    finally:
        await batcher.close()
        await client.aclose()


async def test_a_failing_command_fails_only_its_caller(batched: tuple[Redis, Batcher]) -> None:
    client, batcher = batched
    await client.set("plain", "x")
    wrong, right = batcher.send("HGETALL", "plain"), batcher.send("GET", "plain")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await wrong
    assert await right == b"x"


async def test_replies_drops_the_others_when_one_fails(batched: tuple[Redis, Batcher]) -> None:
    """A pending reply is cancelled; a failed one is marked retrieved, so asyncio never logs
    "exception was never retrieved" for it."""
    client, batcher = batched
    await client.set("plain", "x")
    wrong, failed_too = batcher.send("HGETALL", "plain"), batcher.send("HGETALL", "plain")
    pending: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    with pytest.raises(ResponseError):
        await replies(wrong, failed_too, pending)
    assert pending.cancelled()
    # asyncio's own flag behind that log line (Future.__del__ reads it)
    assert failed_too.done() and failed_too._log_traceback is False


async def test_more_than_a_batch_is_sent_in_several(batched: tuple[Redis, Batcher]) -> None:
    _, batcher = batched
    count = MAX_BATCH * 2 + 3
    got = await asyncio.gather(*(batcher.call("ECHO", str(i)) for i in range(count)))
    assert got == [str(i).encode() for i in range(count)]


@pytest.mark.slow
async def test_a_broken_connection_fails_every_caller_of_the_batch() -> None:
    client = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)  # nothing listens there
    batcher = Batcher(client)
    try:
        futures = [batcher.send("GET", "a"), batcher.send("GET", "b")]
        for future in futures:
            with pytest.raises(Exception) as caught:
                await future
            assert "onnect" in type(caught.value).__name__ + str(caught.value)
    finally:
        await batcher.close()
        await client.aclose()


async def test_scripts_reload_after_redis_forgets_them(redis_url: str) -> None:
    store = await open_store(redis_url)
    assert isinstance(store, RedisStore)
    client = Redis.from_url(redis_url)
    try:
        await store.put(Write("k", "fp1", b"one", ttl=60))
        await client.script_flush()
        await store.put(Write("k", "fp2", b"two", ttl=60))  # EVALSHA fails, EVAL loads it again
        assert await store.get("k", None) == {"fp1": b"one", "fp2": b"two"}
        assert await store.lock("k", "t1", 5) is True
        await client.script_flush()
        await store.unlock("k", "t1")
        assert await store.locked("k") is False
    finally:
        await client.aclose()
        await store.close()


async def test_the_deadline_fails_what_a_frozen_server_leaves_unanswered(tmp_path: Path) -> None:
    """One watchdog per batcher, not a timer per call: an unanswered batch fails after the
    deadline (well before the connection's own 1 s cut-off), and the store says it timed out,
    which a bounded guard takes as its own timeout: the circuit opens at the first one."""
    with running_redis(tmp_path) as server:
        client = Redis.from_url(server.url, socket_timeout=1.0)
        store = RedisStore(client, deadline=0.2)
        guarded = GuardedStore(store, timeout=0.2, bounded=True)
        try:
            await store.put(Write("k", "fp", b"v", 0))
            os.kill(server.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(StoreTimeout):
                    await store.get("k", None)
                assert 0.15 < time.monotonic() - started < 0.9
                with pytest.raises(StoreError, match="timed out"):
                    await guarded.get("k", None)
                assert guarded.is_open
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert await store.get("k", None) == {"fp": b"v"}
        finally:
            await store.close()


async def test_the_deadline_spares_what_was_answered(redis_url: str) -> None:
    """Replies that came in time keep their results, read only after the deadline has passed,
    and the watchdog touches none of them (a failure set on a done future would reach the
    loop's exception handler)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    client = Redis.from_url(redis_url)
    batcher = Batcher(client, deadline=0.1)
    try:
        sent = [batcher.send("ECHO", str(i)) for i in range(20)]
        await asyncio.sleep(0.3)  # answered within milliseconds; the watchdog has run since
        assert [future.result() for future in sent] == [str(i).encode() for i in range(20)]
        assert await batcher.call("ECHO", "after") == b"after"
        assert errors == []
    finally:
        loop.set_exception_handler(None)
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
    """Without a store deadline, the client's socket_timeout bounds a whole batch."""
    with running_redis(tmp_path) as server:
        client = Redis.from_url(server.url, socket_timeout=0.3, socket_connect_timeout=0.3)
        batcher = Batcher(client)
        try:
            assert await batcher.call("PING") is True
            os.kill(server.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(TimeoutError):
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


_BUSY = """
local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end
local start = now()
repeat until now() - start >= 800000
return 'slow'
"""
"""A script that keeps Redis busy for 0.8 s."""


async def test_ticks_issued_while_a_batch_is_on_its_way_go_together_after_it_in_order(
    batched: tuple[Redis, Batcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While Redis is busy with a slow script, the ticks after it wait, and then go in one
    write (one round trip for all of them, not one each); every caller gets its own reply."""
    _, batcher = batched
    await batcher.call("PING")  # the connection is open
    connection = batcher._connection
    assert connection is not None
    writes: list[tuple[bool, int]] = []  # per write: had the slow script answered, commands
    real = connection.send_packed_command

    async def counted(packed: bytes, *args: Any, **kwargs: Any) -> None:
        writes.append((slow.done(), packed.count(b"ECHO")))
        await real(packed, *args, **kwargs)

    monkeypatch.setattr(connection, "send_packed_command", counted)
    slow = batcher.send("EVAL", _BUSY, 0)
    later: list[asyncio.Future[Any]] = []
    for i in range(5):  # five more ticks
        await asyncio.sleep(0.01)
        later.append(batcher.send("ECHO", f"m{i}"))
    assert await slow == b"slow"
    assert [await f for f in later] == [f"m{i}".encode() for i in range(5)]
    assert writes == [(False, 0), (True, 5)]  # the script alone, then the five ticks at once


async def test_a_lock_whose_caller_gave_up_is_released_when_redis_answers(
    tmp_path: Path,
) -> None:
    """Asked for, then not waited for (a store deadline the batch outlives, a cancelled
    request): Redis takes the lock once it answers, and nobody would release it; every fill of
    the key would wait the lock timeout out. Both ways of asking (the leader's lookup, the
    follower's script) queue the release behind the lock."""
    with running_redis(tmp_path) as server:
        client = Redis.from_url(server.url)
        store = RedisStore(client)
        try:
            await store.lookup_or_lock("warm", None, "t0", 60)  # connected, scripts loaded
            await store.lock("warm", "t0", 60)
            os.kill(server.pid, signal.SIGSTOP)
            try:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(store.lookup_or_lock("a", None, "t1", 60), 0.2)
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(store.lock("b", "t2", 60), 0.2)
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert await store.locked("warm")  # what was not given up stays
            for key in ("a", "b"):
                for _ in range(100):  # bounded: the releases follow the locks in one batch
                    if not await store.locked(key):
                        break
                    await asyncio.sleep(0.02)
                assert not await store.locked(key)
        finally:
            await client.aclose()
            await store.close()
