"""The shared zstd dictionary (proxy/server/dictionary.py) over a real Redis: replicas that train
at once end up with one dictionary, a replica adopts the store's at start, and one that meets an
entry naming an unknown dictionary fetches it, at most once a second."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from proxy.core.codec import ZSTD_DICTIONARY, Codec, UnknownDictionary
from proxy.core.entry import Entry
from proxy.server.dictionary import Dictionaries
from proxy.store import open_store
from proxy.store.base import Store

SAMPLES = 60
PASSAGE = (
    "the keeper climbed the stair at dusk and lit the lamp over the harbour while the tide "
    "turned and the ferry waited for the wind to drop before it crossed to the islands"
)
WORDS = PASSAGE.split()


def entry(number: int) -> Entry:
    text = " ".join(WORDS[(number * 5 + i) % len(WORDS)] for i in range(200))
    request = orjson.dumps({"messages": [{"role": "user", "content": text}], "seed": number})
    return Entry(b'{"choices": []}', "application/json", "fp", 1.0, "m", request=request)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    opened = await open_store(redis_url)
    yield opened
    await opened.close()


async def trained(dictionaries: Dictionaries, codec: Codec, first: int) -> None:
    """Pack SAMPLES entries, as writes would, then let the training finish (bounded)."""
    for number in range(first, first + SAMPLES):
        codec.pack(entry(number))
        dictionaries.written()
    for _ in range(200):
        if codec.dictionary is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no dictionary adopted")


async def test_replicas_that_train_at_once_share_the_first_dictionary(store: Store) -> None:
    codecs = [Codec(level=1, samples=SAMPLES) for _ in range(3)]
    replicas = [Dictionaries(store, codec, SAMPLES, Clock()) for codec in codecs]
    await asyncio.gather(
        *(
            trained(replica, codec, 100 * i)
            for i, (replica, codec) in enumerate(zip(replicas, codecs, strict=True))
        )
    )
    assert len({codec.dictionary for codec in codecs}) == 1
    packed = codecs[0].pack(entry(999))
    assert packed[1] == ZSTD_DICTIONARY
    assert all(codec.unpack(packed) == entry(999) for codec in codecs)


async def test_a_replica_adopts_the_stores_dictionary_at_start(store: Store) -> None:
    codec = Codec(level=1, samples=SAMPLES)
    await trained(Dictionaries(store, codec, SAMPLES, Clock()), codec, 0)
    late = Codec(level=1, samples=SAMPLES)
    await Dictionaries(store, late, SAMPLES, Clock()).settle()
    assert late.dictionary == codec.dictionary
    assert not late.samples_ready and late.samples == []


async def test_an_unknown_dictionary_is_fetched_at_most_once_a_second(store: Store) -> None:
    early, clock = Codec(level=1, samples=10_000), Clock()
    watcher = Dictionaries(store, early, 10_000, clock)
    await watcher.settle()
    trainer = Codec(level=1, samples=SAMPLES)
    await trained(Dictionaries(store, trainer, SAMPLES, Clock()), trainer, 0)
    packed = trainer.pack(entry(7))
    with pytest.raises(UnknownDictionary):
        early.unpack(packed)
    clock.now = 10.0
    watcher.unknown()
    watcher.unknown()  # one fetch in flight: nothing more
    await asyncio.sleep(0.2)
    assert early.unpack(packed) == entry(7)
    assert early.dictionary == trainer.dictionary


async def test_a_dictionary_fetch_is_not_repeated_within_a_second(store: Store) -> None:
    codec, clock = Codec(level=1), Clock()
    watcher = Dictionaries(store, codec, 0, clock)
    clock.now = 5.0
    watcher.unknown()
    await asyncio.sleep(0.1)
    await store.dictionary(b"\x37\xa4\x30\xec" + b"\xff" * 64)  # not a usable one
    clock.now = 5.5
    watcher.unknown()
    assert watcher._task is None  # within the second: not asked
    clock.now = 6.1
    watcher.unknown()
    assert watcher._task is not None
    await watcher.close()
    assert codec.dictionary is None
