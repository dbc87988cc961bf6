"""Running proxies under a Redis that loses its keys (an operator's FLUSHALL, an eviction): the
compression dictionary comes back, so a proxy started afterwards reads what the running ones
write; the near-cache stops serving what was flushed; the fingerprint state is learnt again
without serving another generation; and none of it costs a store error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from bench.procs import settled, wait_until
from proxy.core.codec import ZSTD_DICTIONARY, dictionary_id
from tests.e2e.test_e2e_compression import ask, passage, stored, wait_for_codec
from tests.e2e.test_e2e_fingerprints import FP1, FP2, MODEL, chat, outcome
from tests.e2e.test_faults import own_redis
from tests.fixtures_procs import Proxy, ProxyFactory, Sim
from tests.fixtures_redis import running_redis

ROUND = 15.0
"""Seconds within which a proxy's background round (every 5 s) must have run at least once."""
ADMIN = "t"


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    """A Redis of this test's own: it is flushed while proxies use it. Asked for before the
    proxies, so that it stops after them."""
    with running_redis(tmp_path / "redis") as server:
        yield server.url


def flushed(url: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.flushall()


def held(url: str, key: str) -> bytes | None:
    with redis.Redis.from_url(url) as client:
        value = client.get(key)
    return None if value is None else bytes(value)


def only_if_cached(proxy: Proxy, content: str) -> int:
    headers = {"Cache-Control": "only-if-cached"}
    return proxy.chat(content, model="m", key="sk-alice", headers=headers).status_code


def test_a_proxy_started_after_a_flush_reads_what_a_running_one_writes_with_its_dictionary(
    url: str, start_proxy: ProxyFactory
) -> None:
    shared = ("--store", url, "--near-cache", "0", "--compression-dictionary", "40")
    running = start_proxy(*shared)
    for number in range(40):
        ask(running, passage(number))
    wait_for_codec(url, running, ZSTD_DICTIONARY)
    dictionary = held(url, "repro:dictionary")
    assert dictionary is not None
    flushed(url)
    wait_until(lambda: held(url, "repro:dictionary") == dictionary, "the dictionary", ROUND)
    written = ask(running, passage(7000))
    value = stored(url, written.headers["X-Repro-Key"])
    assert value[1] == ZSTD_DICTIONARY
    assert value[6:10] == dictionary_id(dictionary).to_bytes(4, "big")
    late = start_proxy(*shared)
    again = ask(late, passage(7000))
    assert again.headers["X-Repro-Cache"] == "HIT"
    assert again.content == written.content
    assert running.store_errors() == {} and late.store_errors() == {}


def test_after_a_failover_to_an_empty_redis_a_new_replica_shares_the_running_ones_cache(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Redis replaced by an empty one at the same address (a failover to a replica that had not
    synced, a restart without persistence): the running proxy gives it back its secret and
    dictionary, so that a replica started then reads what the running one writes."""
    with own_redis(tmp_path / "redis") as server:
        shared = ("--store", server.url, "--compression-dictionary", "40")
        running = start_proxy(*shared)
        for number in range(40):
            ask(running, passage(number))
        wait_for_codec(server.url, running, ZSTD_DICTIONARY)
        secret, dictionary = held(server.url, "repro:secret"), held(server.url, "repro:dictionary")
        server.kill()
        server.start()  # same port, no data

        def restored() -> bool:
            return (held(server.url, "repro:secret"), held(server.url, "repro:dictionary")) == (
                secret,
                dictionary,
            )

        wait_until(restored, "the secret and the dictionary offered again", ROUND)
        written = settled(
            lambda: ask(running, passage(8000)),
            lambda answer: stored(server.url, answer.headers["X-Repro-Key"])[1] == ZSTD_DICTIONARY,
            ROUND,
        )
        late = start_proxy(*shared)
        again = ask(late, passage(8000))
        assert again.headers["X-Repro-Cache"] == "HIT"
        assert again.content == written.content


def test_after_a_flush_the_near_cache_stops_serving_within_a_round(
    url: str, start_proxy: ProxyFactory, sim: Sim
) -> None:
    """An operator flushes Redis to empty the cache: memory must follow, not serve what is gone
    until the proxy restarts. Afterwards the cache fills and serves from memory again."""
    proxy = start_proxy("--store", url)
    first = proxy.chat("q", model="m", key="sk-alice")
    assert proxy.chat("q", model="m", key="sk-alice").headers["X-Repro-Cache"] == "HIT"
    flushed(url)
    status = settled(lambda: only_if_cached(proxy, "q"), lambda code: code == 504, ROUND)
    assert status == 504
    refilled = proxy.chat("q", model="m", key="sk-alice")
    assert refilled.headers["X-Repro-Cache"] == "MISS"
    assert refilled.json()["choices"] == first.json()["choices"]  # the sim answers alike
    assert proxy.chat("q", model="m", key="sk-alice").headers["X-Repro-Cache"] == "HIT"
    assert proxy.store_errors() == {}


def test_fingerprint_records_lost_mid_rotation_are_learnt_again(
    url: str, start_proxy: ProxyFactory, sim: Sim
) -> None:
    """The upstream moved from FP1 to FP2; Redis then loses the fingerprint records (evicted),
    while the entries of both generations stay. An FP1 answer is never served for it: the
    next answers tell the current fingerprint again."""
    proxy = start_proxy("--store", url, "--admin-token", ADMIN)
    assert outcome(chat(proxy, "old")) == ("MISS", FP1)
    sim.set_fingerprint(FP2)
    assert outcome(chat(proxy, "new")) == ("MISS", FP2)
    with redis.Redis.from_url(url) as client:
        lost = [*client.scan_iter("repro:fp:*"), *client.scan_iter("repro:rot:*"), "repro:models"]
        client.delete(*lost)
    assert outcome(chat(proxy, "old")) == ("MISS", FP2)  # the FP1 entry is not served
    assert outcome(chat(proxy, "old")) == ("HIT", FP2)  # learnt again at once, not in a while
    report = httpx.get(
        proxy.url + "/admin/fingerprints", headers={"Authorization": f"Bearer {ADMIN}"}
    ).json()
    assert report[MODEL]["current"] == FP2
    assert outcome(chat(proxy, "new")) == ("HIT", FP2)
    assert proxy.store_errors() == {}
