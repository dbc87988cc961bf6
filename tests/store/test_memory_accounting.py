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
from typing import cast

import pytest

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
