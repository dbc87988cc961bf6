"""The admin-token guess limit: per address (IPv6 per /64), a sliding window, a bounded table."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import pytest

from proxy.errors import TooManyGuesses
from proxy.server.guesses import ADDRESSES, ALLOWED, WINDOW, Guesses
from proxy.store import MemoryStore
from proxy.store.base import Store


async def guessed(guesses: Guesses, address: str, times: int, now: float = 0.0) -> None:
    for _ in range(times):
        await guesses.check(None, address, now)
        await guesses.failed(None, address, now)


async def test_the_allowance_then_refusal_until_the_oldest_guess_leaves_the_window() -> None:
    guesses = Guesses()
    await guesses.failed(None, "192.0.2.1", 0.0)
    await guessed(guesses, "192.0.2.1", ALLOWED - 1, now=30.0)
    with pytest.raises(TooManyGuesses) as refused:
        await guesses.check(None, "192.0.2.1", 30.0)
    assert refused.value.headers["Retry-After"] == str(int(WINDOW - 30))
    await guesses.check(None, "192.0.2.2", 30.0)  # another address is heard
    await guesses.check(None, "192.0.2.1", WINDOW)  # the first guess has left: one more try
    await guesses.failed(None, "192.0.2.1", WINDOW)
    with pytest.raises(TooManyGuesses):
        await guesses.check(None, "192.0.2.1", WINDOW)


async def test_an_ipv6_host_counts_as_its_whole_slash_64() -> None:
    guesses = Guesses()
    for host in range(ALLOWED):
        await guesses.failed(None, f"2001:db8:0:1::{host + 1:x}", 0.0)
    with pytest.raises(TooManyGuesses):
        await guesses.check(None, "2001:db8:0:1:ffff::1", 1.0)
    await guesses.check(None, "2001:db8:0:2::1", 1.0)


async def test_the_table_is_bounded_and_forgets_the_stalest() -> None:
    guesses = Guesses()
    await guessed(guesses, "198.51.100.1", ALLOWED)
    for n in range(ADDRESSES):
        await guesses.failed(None, f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", 1.0)
    assert len(guesses) == ADDRESSES
    await guesses.check(None, "198.51.100.1", 2.0)  # forgotten, not refused


async def test_a_lockout_is_logged_with_the_address_only(caplog: pytest.LogCaptureFixture) -> None:
    guesses = Guesses()
    with caplog.at_level(logging.WARNING, "proxy.admin"):
        await guessed(guesses, "192.0.2.9", ALLOWED - 1)
        assert not caplog.records
        await guessed(guesses, "192.0.2.9", 1)
    (record,) = caplog.records
    assert record.__dict__["from"] == "192.0.2.9"


async def test_guesses_counted_by_another_process_sharing_the_store_refuse_here_too() -> None:
    class Shared(MemoryStore):
        shared = True

    store = Shared()
    elsewhere, here = Guesses(), Guesses()
    for _ in range(ALLOWED):
        await elsewhere.check(store, "192.0.2.7", 1.0)
        await elsewhere.failed(store, "192.0.2.7", 1.0)
    with pytest.raises(TooManyGuesses) as refused:
        await here.check(store, "192.0.2.7", 2.0)
    assert refused.value.headers["Retry-After"] == str(int(WINDOW - 1))
    await here.check(store, "192.0.2.8", 2.0)
    await here.check(store, "192.0.2.7", 1.0 + WINDOW)  # the window has passed
    await here.check(MemoryStore(), "192.0.2.7", 2.0)  # a process's own store: its own count


class SlowSharedStore:
    """A shared store whose count of guesses takes a while to answer, as Redis's does: every
    try in flight is past its check before any is counted wrong."""

    shared = True

    def __init__(self) -> None:
        self.times: list[float] = []

    async def attempts(
        self, name: str, now: float, window: float, keep: int, add: bool
    ) -> tuple[float, ...]:
        await asyncio.sleep(0.01)
        if add:
            self.times.append(now)
        return tuple(self.times[-keep:])


async def test_concurrent_tries_are_heard_no_more_than_the_allowance() -> None:
    guesses, store = Guesses(), SlowSharedStore()
    heard = 0

    async def guess() -> None:
        nonlocal heard
        try:
            async with guesses.attempt(cast(Store, store), "192.0.2.7", 1.0):
                heard += 1
                await asyncio.sleep(0.01)  # the comparison, the answer
                await guesses.failed(cast(Store, store), "192.0.2.7", 1.0)
        except TooManyGuesses as refused:
            assert refused.headers["Retry-After"] in {"1", str(int(WINDOW))}

    await asyncio.gather(*(guess() for _ in range(5 * ALLOWED)))
    assert heard == ALLOWED
    assert guesses._trying == {}  # nothing left in flight, nothing remembered for it
    with pytest.raises(TooManyGuesses):
        await guesses.check(cast(Store, store), "192.0.2.7", 2.0)


async def test_a_right_token_in_flight_counts_only_while_it_is_judged() -> None:
    guesses = Guesses()
    for _ in range(3 * ALLOWED):  # an operator's scripts, right every time
        async with guesses.attempt(None, "192.0.2.8", 1.0):
            pass
    await guesses.check(None, "192.0.2.8", 1.0)


async def test_ipv4_callers_of_a_dual_stack_listener_count_by_their_own_address() -> None:
    guesses = Guesses()
    await guessed(guesses, "::ffff:10.1.2.3", ALLOWED)
    with pytest.raises(TooManyGuesses):
        await guesses.check(None, "::ffff:10.1.2.3", 1.0)
    with pytest.raises(TooManyGuesses):
        await guesses.check(None, "10.1.2.3", 1.0)  # one host however it is written
    await guesses.check(None, "::ffff:10.1.2.4", 1.0)
    await guesses.check(None, "::1", 1.0)  # not the ::/64 every mapped address fell in
