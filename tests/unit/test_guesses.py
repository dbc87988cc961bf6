"""The admin-token guess limit: per address (IPv6 per /64), a sliding window, a bounded table."""

from __future__ import annotations

import logging

import pytest

from proxy.errors import TooManyGuesses
from proxy.server.guesses import ADDRESSES, ALLOWED, WINDOW, Guesses


def guessed(guesses: Guesses, address: str, times: int, now: float = 0.0) -> None:
    for _ in range(times):
        guesses.check(address, now)
        guesses.failed(address, now)


def test_the_allowance_then_refusal_until_the_oldest_guess_leaves_the_window() -> None:
    guesses = Guesses()
    guesses.failed("192.0.2.1", 0.0)
    guessed(guesses, "192.0.2.1", ALLOWED - 1, now=30.0)
    with pytest.raises(TooManyGuesses) as refused:
        guesses.check("192.0.2.1", 30.0)
    assert refused.value.headers["Retry-After"] == str(int(WINDOW - 30))
    guesses.check("192.0.2.2", 30.0)  # another address is heard
    guesses.check("192.0.2.1", WINDOW)  # the first guess has left the window: one more try
    guesses.failed("192.0.2.1", WINDOW)
    with pytest.raises(TooManyGuesses):
        guesses.check("192.0.2.1", WINDOW)


def test_an_ipv6_host_counts_as_its_whole_slash_64() -> None:
    guesses = Guesses()
    for host in range(ALLOWED):
        guesses.failed(f"2001:db8:0:1::{host + 1:x}", 0.0)
    with pytest.raises(TooManyGuesses):
        guesses.check("2001:db8:0:1:ffff::1", 1.0)
    guesses.check("2001:db8:0:2::1", 1.0)


def test_the_table_is_bounded_and_forgets_the_stalest() -> None:
    guesses = Guesses()
    guessed(guesses, "198.51.100.1", ALLOWED)
    for n in range(ADDRESSES):
        guesses.failed(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", 1.0)
    assert len(guesses) == ADDRESSES
    guesses.check("198.51.100.1", 2.0)  # forgotten, not refused


def test_a_lockout_is_logged_with_the_address_only(caplog: pytest.LogCaptureFixture) -> None:
    guesses = Guesses()
    with caplog.at_level(logging.WARNING, "proxy.admin"):
        guessed(guesses, "192.0.2.9", ALLOWED - 1)
        assert not caplog.records
        guessed(guesses, "192.0.2.9", 1)
    (record,) = caplog.records
    assert record.__dict__["from"] == "192.0.2.9"
