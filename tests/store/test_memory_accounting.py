"""The byte bounds of what this process keeps bound the memory it takes, as tracemalloc counts
it: `memory://?max_bytes=256MiB` or `--near-cache 64MiB` must not grow the process by half as
much again.

Each write is made of fresh objects, as the server makes them per request (a key from a hash,
a fingerprint and a model parsed from JSON, labels per call), so that nothing is shared by
accident that the server would not share.
"""

from __future__ import annotations

import gc
import hashlib
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Settings
from proxy.core.call import Asked, prepare_with
from proxy.core.lru import LRU
from proxy.core.policy import SHARED
from proxy.core.routes import CHAT
from proxy.server.caching import remember
from proxy.server.context import MEMO_ITEMS, Services
from proxy.store import cassette
from proxy.store.base import Labels, Write
from proxy.store.memory import MemoryStore
from proxy.store.near import NearCache
from proxy.store.redis import RedisStore

ENTRIES = 4000


def fresh_write(number: int, size: int) -> Write:
    key = hashlib.sha256(number.to_bytes(8, "big")).hexdigest()
    fingerprint = "".join(("fp_", "0123456789"[number % 3 :], "abc"))
    model = "".join(("gpt-4o", "-mini"))
    value = number.to_bytes(8, "big") * (size // 8)
    labels = Labels(namespace="".join(("team", "-a")), model=model)
    return Write(key, fingerprint, value, 0, labels, model=model)


async def traced(fill: Callable[[], Awaitable[None]]) -> int:
    """Bytes still allocated once `fill` returned: what the store keeps of it."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await fill()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("size", [96, 1000, 8000])
async def test_the_memory_store_charges_what_its_answers_take(size: int) -> None:
    store = MemoryStore(max_bytes=1 << 40)

    async def fill() -> None:
        for number in range(ENTRIES):
            await store.put(fresh_write(number, size))

    taken = await traced(fill)
    charged = (await store.usage()).bytes
    assert 0.9 <= charged / taken <= 1.2, (charged / ENTRIES, taken / ENTRIES)


async def test_a_key_with_several_fingerprints_is_charged_for_each() -> None:
    store = MemoryStore(max_bytes=1 << 40)

    async def fill() -> None:
        for number in range(ENTRIES):
            write = fresh_write(number // 2, 500)
            fingerprint = write.fingerprint + ("x" if number % 2 else "")
            await store.put(write._replace(fingerprint=fingerprint))

    taken = await traced(fill)
    usage = await store.usage()
    assert usage.entries == ENTRIES
    assert 0.9 <= usage.bytes / taken <= 1.2, (usage.bytes / ENTRIES, taken / ENTRIES)


@pytest.mark.parametrize("size", [96, 1000, 8000])
async def test_the_near_cache_charges_what_its_answers_take(size: int) -> None:
    """Every fill of the near-cache goes through `_remember` (a lookup's answers from Redis,
    in a fresh dict each time); the Redis side plays no part in what memory keeps."""
    near = NearCache(MemoryStore(), cast(RedisStore, None), 1 << 40)

    async def fill() -> None:
        for number in range(ENTRIES):
            write = fresh_write(number, size)
            near._remember(write.key, {write.fingerprint: write.value})

    taken = await traced(fill)
    assert 0.9 <= near._size / taken <= 1.2, (near._size / ENTRIES, taken / ENTRIES)


async def test_labels_of_their_own_are_charged_with_their_key() -> None:
    """A namespace is the client's (`X-Repro-Namespace`, up to 256 characters), and so is a
    model name: a tenant naming a new one with each small answer keeps labels larger than the
    answers, which must count to the bound, or `max_bytes` bounds a third of what is held.
    Their characters are charged; the few object headers a Python tuple and two strings take
    are not (labels repeated by consecutive writes share one)."""
    store = MemoryStore(max_bytes=1 << 40)

    async def fill() -> None:
        for number in range(ENTRIES):
            write = fresh_write(number, 96)
            labels = Labels(namespace=f"{number:08d}" + "n" * 248, model=f"{number:06d}" * 40)
            await store.put(write._replace(labels=labels))

    taken = await traced(fill)
    charged = (await store.usage()).bytes
    assert 0.8 <= charged / taken <= 1.2, (charged / ENTRIES, taken / ENTRIES)


def chat(number: int) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{number}"}]}


async def test_the_call_memo_charges_what_its_calls_take() -> None:
    """A remembered call holds the bodies it sends and keeps; orjson writes them in a buffer of
    4 KiB at least, which a memo charged by their length never saw (`canonical.compact`)."""
    settings = Settings()
    services = SimpleNamespace(
        calls=LRU(MEMO_ITEMS, 1 << 40), secret=SimpleNamespace(value="memo-secret")
    )
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer sk-a"}))
    count = 1000
    asked = [
        Asked.of(
            CHAT,
            "",
            orjson.dumps(
                {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{n}"}]}
            ),
            headers,
        )
        for n in range(count)
    ]

    async def fill() -> None:
        for one in asked:
            remember(cast(Services, services), one, prepare_with(settings, "tenant-a", one))

    taken = await traced(fill)
    charged = services.calls.bytes - sum(one.size for one in asked)  # the request facts: before
    assert len(services.calls) == count
    assert taken <= 1.5 * charged, (taken / count, charged / count)


def test_a_loaded_cassette_takes_about_its_size(tmp_path: Path) -> None:
    """Every reader of a cassette (the proxy, the plugin, import, diff) holds it whole: its
    requests were kept in orjson's 4 KiB buffers, four times the file for a chat cassette."""
    line = {
        "format": 1,
        "key": "0" * 64,
        "route": CHAT,
        "query": "",
        "namespace": "",
        "model": "gpt-4o-mini",
        "fingerprint": "fp_1",
        "stored_at": 1.0,
        "seed": 1,
        "seed_source": "default",
        "stream": False,
        "content_type": "application/json",
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "recorded_at": "2026-01-01T00:00:00+00:00",
        "body": orjson.dumps({"choices": [{"message": {"content": "An answer. " * 40}}]}).decode(),
    }
    tape = tmp_path / "tape.jsonl"
    with tape.open("wb") as sink:
        for n in range(2000):
            ask = {
                "model": "gpt-4o-mini",
                "seed": 1,
                "messages": [{"role": "user", "content": f"{n}"}],
            }
            sink.write(orjson.dumps({**line, "request": ask}) + b"\n")
    gc.collect()
    tracemalloc.start()
    try:
        loaded = cassette.read(str(tape), SHARED)
        gc.collect()
        taken = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(loaded) == 2000
    assert taken <= 2 * tape.stat().st_size, (taken / 2000, tape.stat().st_size / 2000)
