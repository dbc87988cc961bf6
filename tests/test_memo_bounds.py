"""The decoded-entry memo is bounded by the store it serves: a small store's evicted answers must
not stay resident in the memo long after the store dropped them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from proxy.app import create_app
from proxy.config import Settings
from proxy.context import ENTRY_MEMO_BYTES, SERVICES, Services, entry_memo
from proxy.entry import Entry

UNUSED = "http://127.0.0.1:9"  # no request reaches the upstream here


def answer(number: int) -> tuple[bytes, Entry]:
    entry = Entry(b"x" * 400, "application/json", "fp_1", 0.0, "m", seed=number)
    return entry.pack(), entry


def test_the_memo_holds_at_most_twice_what_the_store_keeps() -> None:
    memo = entry_memo(local_bytes=10_000)
    blobs = [answer(number) for number in range(40)]
    for blob, entry in blobs:
        memo.put(blob, entry, len(blob) * 2)  # as proxy.caching.decoded charges it
    assert memo.bytes <= 20_000
    assert 0 < len(memo) < 40
    assert memo.get(blobs[0][0]) is None  # the oldest answers went first
    assert memo.get(blobs[-1][0]) == blobs[-1][1]


def test_without_a_local_store_the_memo_keeps_its_own_bound() -> None:
    assert entry_memo().max_bytes == ENTRY_MEMO_BYTES
    assert entry_memo(local_bytes=1 << 40).max_bytes == ENTRY_MEMO_BYTES


async def services(settings: Settings) -> AsyncIterator[Services]:
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    try:
        yield runner.app[SERVICES]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("store", "budget"),
    [
        ("memory://?max_bytes=1MiB", 2 * 1024 * 1024),
        ("memory://", ENTRY_MEMO_BYTES),  # the default 256 MiB store: the memo's own bound
    ],
)
async def test_the_app_bounds_the_memo_by_its_memory_store(store: str, budget: int) -> None:
    async for built in services(Settings(store=store, upstream=UNUSED)):
        assert built.entries.max_bytes == budget


async def test_the_app_bounds_the_memo_by_its_near_cache(redis_url: str) -> None:
    settings = Settings(store=redis_url, upstream=UNUSED, near_cache=4 * 1024 * 1024)
    async for built in services(settings):
        assert built.entries.max_bytes == 8 * 1024 * 1024
