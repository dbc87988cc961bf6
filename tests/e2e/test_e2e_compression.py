"""Stored answers are compressed: a MISS stores a zstd entry, the HIT serves the exact bytes, the
stats and /metrics say how much it saved, and proxies with compression on and off read each
other's entries. A hostile value in the store (a decompression bomb, a format from the future)
is a MISS that the proxy refills, never an error."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import orjson
import pytest
import redis
import zstandard

from proxy.core.codec import FORMAT, PLAIN, ZSTD, ZSTD_DICTIONARY, dictionary_id
from tests.fixtures_procs import Proxy, ProxyFactory

TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
AUTH = {"Authorization": "Bearer sk-alice", "Content-Type": "application/json"}
PROSE = (
    "Summarize the following passage for a ten-year-old reader. The harbour town woke slowly "
    "that winter: fishing boats idled at their moorings, the baker's lamps burned from four in "
    "the morning, and the ferry to the islands ran only when the wind allowed. Old maps in the "
    "town hall showed a second pier, long since washed away, where merchants once unloaded "
    "spices, copper and bolts of cloth from ships that had crossed two oceans to get there. "
)


def ask(proxy: Proxy, content: str, stream: bool = False) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
    response = httpx.post(
        proxy.v1 + "/chat/completions", content=orjson.dumps(body), headers=AUTH, timeout=10
    )
    assert response.status_code == 200
    return response


def stored(redis_url: str, key: str) -> bytes:
    with redis.Redis.from_url(redis_url) as client:
        fields = client.hgetall(f"repro:e:{{{key}}}")
    values = [value for name, value in fields.items() if not name.startswith(b"\0")]
    assert len(values) == 1
    return bytes(values[0])


def overwrite(redis_url: str, key: str, value: bytes) -> None:
    with redis.Redis.from_url(redis_url) as client:
        name = f"repro:e:{{{key}}}"
        fields = [f for f in client.hkeys(name) if not f.startswith(b"\0")]
        client.hset(name, fields[0], value)


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
def test_a_miss_stores_a_compressed_entry_and_the_hit_serves_the_same_bytes(
    start_proxy: ProxyFactory, redis_url: str, stream: bool
) -> None:
    proxy = start_proxy("--store", redis_url, "--near-cache", "0", "--admin-token", TOKEN)
    miss = ask(proxy, PROSE * 3, stream)
    hit = ask(proxy, PROSE * 3, stream)
    assert (miss.headers["X-Repro-Cache"], hit.headers["X-Repro-Cache"]) == ("MISS", "HIT")
    assert hit.content == miss.content
    value = stored(redis_url, miss.headers["X-Repro-Key"])
    assert value[:2] == bytes([FORMAT, ZSTD])
    assert len(value) < (len(PROSE) * 3 + len(miss.content)) / 2
    stats = httpx.get(proxy.url + "/admin/stats", headers=ADMIN, timeout=10).json()
    assert stats["raw_bytes"] > stats["bytes"] > 0
    assert 0 < stats["compression_ratio"] < 1
    assert stats["dictionary"] is None  # not before 1000 answers
    assert 0 < proxy.metric("repro_store_compression_ratio") < 0.7


def test_compression_off_stores_plain_entries_and_either_reads_the_other(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    plain = start_proxy("--store", redis_url, "--near-cache", "0", "--compression", "off")
    packed = start_proxy("--store", redis_url, "--near-cache", "0")
    first = ask(plain, PROSE + "one")
    assert stored(redis_url, first.headers["X-Repro-Key"])[:2] == bytes([FORMAT, PLAIN])
    assert ask(packed, PROSE + "one").headers["X-Repro-Cache"] == "HIT"
    second = ask(packed, PROSE + "two")
    assert stored(redis_url, second.headers["X-Repro-Key"])[:2] == bytes([FORMAT, ZSTD])
    again = ask(plain, PROSE + "two")
    assert (again.headers["X-Repro-Cache"], again.content) == ("HIT", second.content)
    assert plain.metric("repro_store_compression_ratio") > 1  # plain: only the head added


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param(
            bytes([FORMAT, ZSTD])
            + (1 << 31).to_bytes(4, "big")
            + zstandard.ZstdCompressor().compress(b"\0" * (1 << 24)),
            id="bomb",
        ),
        pytest.param(bytes([9, ZSTD, 0, 0, 0, 5]) + b"hello", id="future-version"),
        pytest.param(bytes([FORMAT, 2, 0, 0, 0, 5, 0, 0, 0, 7]) + b"hello", id="unknown-dict"),
        pytest.param(b"\x02\x01\x00", id="truncated"),
    ],
)
def test_a_hostile_stored_value_is_a_miss_and_is_refilled(
    start_proxy: ProxyFactory, redis_url: str, hostile: bytes
) -> None:
    proxy = start_proxy("--store", redis_url, "--near-cache", "0")
    first = ask(proxy, PROSE)
    key = first.headers["X-Repro-Key"]
    overwrite(redis_url, key, hostile)
    again = ask(proxy, PROSE)
    assert again.headers["X-Repro-Cache"] == "MISS"
    assert stored(redis_url, key)[:2] == bytes([FORMAT, ZSTD])
    assert ask(proxy, PROSE).headers["X-Repro-Cache"] == "HIT"


def test_the_memory_store_counts_compressed_bytes(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy("--admin-token", TOKEN)
    for number in range(5):
        ask(proxy, f"{PROSE} {number}")
        assert ask(proxy, f"{PROSE} {number}").headers["X-Repro-Cache"] == "HIT"
    stats = httpx.get(proxy.url + "/admin/stats", headers=ADMIN, timeout=10).json()
    assert stats["entries"] == 5
    assert stats["bytes"] < 0.8 * stats["raw_bytes"]


def passage(number: int) -> str:
    """Prompts alike in vocabulary, each one distinct."""
    words = PROSE.split()
    return " ".join(words[(number * 11 + i) % len(words)] for i in range(150)) + f" ({number})"


def wait_for_codec(redis_url: str, proxy: Proxy, codec: int, limit: int = 200) -> int:
    """Store new prompts until one is written with `codec` (bounded); the prompt's number."""
    for number in range(1000, 1000 + limit):
        if stored(redis_url, ask(proxy, passage(number)).headers["X-Repro-Key"])[1] == codec:
            return number
    raise AssertionError(f"no entry written with codec {codec} in {limit} tries")


def test_replicas_train_share_and_adopt_one_dictionary(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    shared = ("--store", redis_url, "--near-cache", "0", "--compression-dictionary", "40")
    early = start_proxy(*shared)
    trainer = start_proxy(*shared)
    for number in range(40):
        ask(trainer, passage(number))
    number = wait_for_codec(redis_url, trainer, ZSTD_DICTIONARY)
    with redis.Redis.from_url(redis_url) as client:
        dictionary = client.get("repro:dictionary")
    assert dictionary is not None and dictionary.startswith(b"\x37\xa4\x30\xec")  # zstd's magic
    value = stored(redis_url, ask(trainer, passage(number)).headers["X-Repro-Key"])
    assert value[6:10] == dictionary_id(dictionary).to_bytes(4, "big")
    late = start_proxy(*shared, "--admin-token", TOKEN)  # adopts it at start
    stats = httpx.get(late.url + "/admin/stats", headers=ADMIN, timeout=10).json()
    assert stats["dictionary"] == f"{dictionary_id(dictionary):08x}"
    assert ask(late, passage(number)).headers["X-Repro-Cache"] == "HIT"
    # Started before the dictionary existed: a miss, then it fetches the store's, then HITs.
    outcomes = []
    for _ in range(50):
        outcomes.append(ask(early, passage(number)).headers["X-Repro-Cache"])
        if outcomes[-1] == "HIT":
            break
        time.sleep(0.1)
    assert outcomes[-1] == "HIT"
    fresh = ask(early, passage(5000))
    assert stored(redis_url, fresh.headers["X-Repro-Key"])[:2] == bytes([FORMAT, ZSTD_DICTIONARY])
    # The cassette export reads entries of every kind, those naming the dictionary included.
    exported = subprocess.run(
        [sys.executable, "-m", "proxy", "export", "--store", redis_url],
        capture_output=True,
        timeout=60,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout.splitlines()
    with redis.Redis.from_url(redis_url) as client:
        assert len(exported) == sum(1 for _ in client.scan_iter(match="repro:e:*"))
    assert passage(5000).encode() in b"".join(exported)


def test_no_dictionary_when_switched_off(start_proxy: ProxyFactory, redis_url: str) -> None:
    proxy = start_proxy("--store", redis_url, "--compression-dictionary", "0")
    for number in range(30):
        response = ask(proxy, passage(number))
        assert stored(redis_url, response.headers["X-Repro-Key"])[1] == ZSTD
    with redis.Redis.from_url(redis_url) as client:
        assert client.get("repro:dictionary") is None


def test_a_hostile_dictionary_in_the_store_is_refused_and_entries_still_serve(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.set("repro:dictionary", b"\x37\xa4\x30\xec" + b"\xff" * 64)
    proxy = start_proxy("--store", redis_url, "--near-cache", "0")
    first = ask(proxy, PROSE + "hostile")
    assert ask(proxy, PROSE + "hostile").content == first.content
    assert stored(redis_url, first.headers["X-Repro-Key"])[1] in (ZSTD, ZSTD_DICTIONARY)
