"""Identical concurrent misses make one upstream call, in one process and across replicas."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
from collections.abc import Iterator

import aiohttp
import orjson
import redis

from bench.procs import settled
from tests.fixtures_procs import Proxy, ProxyFactory, Sim

BODY = orjson.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "coalesce me"}]}
)
HEADERS = {"Authorization": "Bearer sk-alice", "Content-Type": "application/json"}


async def burst(
    proxies: list[Proxy], count: int, body: bytes = BODY
) -> list[tuple[int, str, bytes]]:
    connector = aiohttp.TCPConnector(limit=count)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(index: int) -> tuple[int, str, bytes]:
            url = proxies[index % len(proxies)].v1 + "/chat/completions"
            async with session.post(url, data=body, headers=HEADERS) as response:
                return response.status, response.headers["X-Repro-Cache"], await response.read()

        return await asyncio.gather(*(one(index) for index in range(count)))


def test_500_identical_misses_make_one_upstream_call(proxy: Proxy, sim: Sim) -> None:
    sim.settings(latency=0.5)
    results = asyncio.run(burst([proxy], 500))
    assert {status for status, _, _ in results} == {200}
    assert len({body for _, _, body in results}) == 1
    outcomes = [cache for _, cache, _ in results]
    assert outcomes.count("MISS") == 1
    assert outcomes.count("HIT") == 499
    assert len(sim.llm_requests()) == 1
    assert proxy.metric("repro_cache_misses_total", model="gpt-4o-mini") == 1
    assert proxy.metric("repro_cache_hits_total", model="gpt-4o-mini") == 499


def test_identical_misses_across_replicas_sharing_redis(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str
) -> None:
    replicas = [start_proxy("--store", redis_url, "--secret", "s-sixteen-bytes!") for _ in range(2)]
    sim.settings(latency=0.5)
    results = asyncio.run(burst(replicas, 200))
    assert {status for status, _, _ in results} == {200}
    assert len({body for _, _, body in results}) == 1
    assert [cache for _, cache, _ in results].count("MISS") == 1
    assert len(sim.llm_requests()) == 1


def test_followers_go_upstream_when_the_leader_is_late(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy("--lock-timeout", "0.3")
    sim.settings(latency=1.0)
    results = asyncio.run(burst([proxy], 5))
    assert {status for status, _, _ in results} == {200}
    assert len(sim.llm_requests()) == 5
    hit = asyncio.run(burst([proxy], 1))[0]
    assert hit[1] == "HIT"
    leader = [body for _, cache, body in results if cache == "MISS"]
    assert hit[2] in leader


def test_a_failed_leader_lets_followers_call_the_upstream(proxy: Proxy, sim: Sim) -> None:
    sim.settings(latency=1.0)  # the 503 too: all four arrive while the leader waits
    sim.fault(kind="status", status=503, count=1)
    results = asyncio.run(burst([proxy], 4))
    assert sorted(status for status, _, _ in results) == [200, 200, 200, 503]
    assert len(sim.llm_requests()) == 4


def test_uncacheable_requests_never_wait(proxy: Proxy, sim: Sim) -> None:
    sim.settings(latency=0.3)
    headers = {**HEADERS, "Cache-Control": "no-store"}

    async def run() -> list[str]:
        async with aiohttp.ClientSession() as session:

            async def one() -> str:
                url = proxy.v1 + "/chat/completions"
                async with session.post(url, data=BODY, headers=headers) as response:
                    return response.headers["X-Repro-Cache"]

            return await asyncio.gather(*(one() for _ in range(5)))

    assert asyncio.run(run()) == ["BYPASS"] * 5
    assert len(sim.llm_requests()) == 5


def test_a_leaders_miss_is_plain_commands_in_two_round_trips(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str
) -> None:
    """What Redis sees for one miss once the model is known: the fill lock and the entry's read
    (one round trip; the near-cache holds the model's state, so that is not read); then the
    entry's write, its news and the lock's release (the second). No script (a script costs
    Redis twice the CPU of its commands), and no write of the model's record: a repeat of its
    current fingerprint is counted in the proxy. The proxy's background round (the secret, the
    dictionary, the near-cache's generation; every few seconds) may fall within the request and
    is left out: it is not the miss's."""
    proxy = start_proxy("--store", redis_url)
    for teach in ("a first answer of the model", "whose state the near-cache then keeps"):
        asyncio.run(burst([proxy], 1, body=_body(teach)))
    with monitored(redis_url) as seen:
        results = asyncio.run(burst([proxy], 1, body=_body("a new question")))
    assert [(status, cache) for status, cache, _ in results] == [(200, "MISS")]
    background = {b"repro:secret", b"repro:dictionary", b"repro:generation"}
    commands = [args[0].lower() for args in seen if not background & set(args[1:2])]
    assert sorted(commands) == [b"del", b"hgetall", b"hset", b"persist", b"publish", b"set"]
    assert redis.Redis.from_url(redis_url).keys("*l:*") == []


QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
"""An argument as MONITOR shows it: quoted, with its quotes and backslashes escaped."""


@contextlib.contextmanager
def monitored(redis_url: str) -> Iterator[list[list[bytes]]]:
    """The commands Redis runs while the block runs, each as its name and first argument
    (MONITOR), up to an ECHO sent after the block: everything before it was received before it."""
    seen: list[list[bytes]] = []
    end = b"end-of-monitored-" + os.urandom(8).hex().encode()
    watcher = redis.Redis.from_url(redis_url, socket_timeout=10)
    ready = threading.Event()

    def watch() -> None:
        with watcher.monitor() as monitor:
            ready.set()
            connection = monitor.connection
            assert connection is not None
            for _ in range(10_000):  # bounded: a miss is a handful of commands
                line = str(connection.read_response()).split("] ", 1)[1]
                raw = [arg.encode() for arg in QUOTED.findall(line)[:2]]  # a command, its key
                if raw == [b"ECHO", end]:
                    return
                seen.append(raw)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield seen
    finally:
        redis.Redis.from_url(redis_url).echo(end)
        thread.join(10)
        assert not thread.is_alive()


def test_a_hit_read_through_the_lock_leaves_no_lock(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str
) -> None:
    """Without a near-cache every HIT asks Redis through the leader's lookup, which takes the
    lock before it reads: finding the entry, it lets the lock go again."""
    writer = start_proxy("--store", redis_url)
    reader = start_proxy("--store", redis_url, "--near-cache", "0")
    body = _body("stored by one replica, read by another")
    assert [r[:2] for r in asyncio.run(burst([writer], 1, body=body))] == [(200, "MISS")]
    client = redis.Redis.from_url(redis_url)
    for _ in range(3):
        assert [r[:2] for r in asyncio.run(burst([reader], 1, body=body))] == [(200, "HIT")]
    # the release is not awaited: it follows the answer
    assert settled(lambda: client.keys("*l:*"), lambda keys: not keys, 5, 0.01) == []
    assert len(sim.llm_requests()) == 1


def _body(content: str) -> bytes:
    return orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    )
