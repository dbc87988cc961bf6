"""The circuit breaker's state machine, with a store that fails on command and a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from proxy.store.base import StoreError, StoreRefused, Write
from proxy.store.guard import CircuitOpen, GuardedStore
from proxy.store.memory import MemoryStore


class FlakyStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"  # ok | error | refuse | hang
        self.calls = 0

    async def get(self, key: str, fingerprints: object) -> dict[str, bytes]:  # type: ignore[override]
        self.calls += 1
        if self.mode == "error":
            raise StoreError("connection refused")
        if self.mode == "refuse":
            raise StoreRefused("redis get refused: OOM")
        if self.mode == "hang":
            await asyncio.sleep(3600)
        return {}

    async def ping(self) -> None:
        if self.mode != "ok":
            raise StoreError("down")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guarded(inner: FlakyStore, clock: Clock) -> GuardedStore:
    return GuardedStore(inner, timeout=0.05, threshold=3, cooldown=5, clock=clock)


async def test_fast_failures_open_the_circuit_after_the_threshold() -> None:
    inner, clock = FlakyStore(), Clock()
    store = guarded(inner, clock)
    inner.mode = "error"
    for _ in range(3):
        with pytest.raises(StoreError):
            await store.get("k", None)
    assert store.is_open
    with pytest.raises(CircuitOpen):
        await store.get("k", None)
    assert inner.calls == 3


async def test_refusals_fail_their_calls_but_never_open_the_circuit() -> None:
    inner, clock = FlakyStore(), Clock()
    store = guarded(inner, clock)
    inner.mode = "refuse"
    for _ in range(5):
        with pytest.raises(StoreRefused):
            await store.get("k", None)
    assert not store.is_open
    inner.mode = "ok"
    assert await store.get("k", None) == {}


async def test_a_timeout_opens_the_circuit_at_once_and_bounds_the_call() -> None:
    inner, clock = FlakyStore(), Clock()
    store = guarded(inner, clock)
    inner.mode = "hang"
    started = time.monotonic()
    with pytest.raises(StoreError, match="timed out"):
        await store.get("k", None)
    assert time.monotonic() - started < 1
    assert store.is_open
    with pytest.raises(CircuitOpen):
        await store.put(Write("k", "fp", b"v", 0))


async def test_after_the_cooldown_one_probe_closes_or_reopens() -> None:
    inner, clock = FlakyStore(), Clock()
    store = guarded(inner, clock)
    inner.mode = "hang"
    with pytest.raises(StoreError):
        await store.get("k", None)
    clock.now += 5
    inner.mode = "error"
    with pytest.raises(StoreError, match="refused"):
        await store.get("k", None)
    assert store.is_open
    with pytest.raises(CircuitOpen):
        await store.get("k", None)
    clock.now += 5
    inner.mode = "ok"
    assert await store.get("k", None) == {}
    assert not store.is_open


async def test_success_resets_the_failure_count() -> None:
    inner, clock = FlakyStore(), Clock()
    store = guarded(inner, clock)
    for mode in ("error", "error", "ok", "error", "error"):
        inner.mode = mode
        with contextlib.suppress(StoreError):
            await store.get("k", None)
    assert not store.is_open


async def test_ping_reports_and_an_answer_closes_the_circuit() -> None:
    inner, clock = FlakyStore(), Clock()
    store = guarded(inner, clock)
    inner.mode = "hang"
    with pytest.raises(StoreError):
        await store.get("k", None)
    inner.mode = "error"
    with pytest.raises(StoreError):
        await store.ping()
    inner.mode = "ok"
    await store.ping()
    assert not store.is_open
