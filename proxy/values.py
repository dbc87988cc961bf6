"""Parsers of the settings' values: each turns a text into a value or raises ValueError saying
what it expected, in words a user reads (`proxy.config` names the setting in the error)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from proxy.store import check_url, parse_size
from proxy.store.encrypted import parse_keys


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value

    return parse


def ranged(cast: Callable[[str], Any], expected: str, fits: Callable[[Any], bool]) -> Any:
    """A parser of numbers that fit, whose error says what was expected (not Python's wording)."""

    def parse(text: str) -> Any:
        try:
            value = cast(text.strip())
        except ValueError:
            raise ValueError(f"expected {expected}") from None
        if not fits(value):
            raise ValueError(f"expected {expected}")
        return value

    return parse


_INF = float("inf")
seconds = ranged(float, "a number of seconds >= 0", lambda v: 0 <= v < _INF)
positive_seconds = ranged(float, "a number of seconds > 0", lambda v: 0 < v < _INF)
fraction = ranged(float, "a fraction between 0 and 1", lambda v: 0 <= v <= 1)
non_negative_int = ranged(int, "an integer >= 0", lambda v: v >= 0)
positive_int = ranged(int, "an integer >= 1", lambda v: v >= 1)
port = ranged(int, "a port between 0 and 65535", lambda v: 0 <= v <= 65535)
seed = ranged(int, "an integer between -2^63 and 2^63-1", lambda v: -(2**63) <= v < 2**63)
count = ranged(int, "auto or an integer >= 1", lambda v: v >= 1)


def connections(text: str) -> int | None:
    """`auto` (None): derived from the descriptor limit when serving starts."""
    return None if text.strip().lower() == "auto" else int(count(text))


def switch(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("on", "off", "true", "false", "1", "0", "yes", "no"):
        raise ValueError("expected on or off")
    return value in ("on", "true", "1", "yes")


zstd_level = ranged(int, "a zstd level from 1 to 19, or 0 (off)", lambda v: 0 <= v <= 19)


def compression(text: str) -> int:
    return 0 if text.strip().lower() == "off" else int(zstd_level(text))


def size(text: str) -> int:
    return parse_size(text)


def positive_size(text: str) -> int:
    value = parse_size(text)
    if value <= 0:
        raise ValueError("expected a size > 0")
    return value


def encryption_keys(text: str) -> str:
    parse_keys(text)
    return text


def upstream(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "expected an http:// or https:// base URL such as https://api.openai.com/v1"
        )
    return text.rstrip("/")


def readable_file(text: str) -> str:
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise ValueError("expected a readable file")
    return text


def store_url(text: str) -> str:
    check_url(text)
    return text
