"""Parsers of the settings' values: each turns a text into a value or raises ValueError saying
what it expected, in words a user reads (`proxy.config` names the setting in the error)."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import SplitResult, urlsplit

from proxy.core.numbers import decimal, integer
from proxy.store import check_url, parse_size
from proxy.store.encrypted import parse_keys

T = TypeVar("T")


def argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """A parser as an argparse type, for the commands besides `serve`: a wrong value is then
    argparse's usage and one line naming the flag, the value and what was expected."""

    def checked(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{exc}, got {shown(text)!r}") from None

    return checked


_USERINFO = re.compile(r"//([^/?#]*)@")  # greedy: a password may hold an @ itself


def shown(text: str, *, query: bool = True) -> str:
    """A wrong value as an error repeats it: a URL's user info and (unless `query` is false)
    its query, where gateways take keys, masked; cut to 80 characters."""
    text = _USERINFO.sub("//***@", text)
    if query:
        text = re.sub(r"\?.*", "?…", text, flags=re.DOTALL)
    return text if len(text) <= 80 else text[:79] + "…"


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


MAX_SECONDS = 10 * 365 * 24 * 3600
"""Ten years: longer than any wait or lifetime a setting means, and far inside what every clock
and timer under the proxy takes (a C `time_t`, Redis's expiries, threading's TIMEOUT_MAX)."""
MAX_COUNT = 2**31 - 1
_TEN_YEARS = f"at most {MAX_SECONDS} (ten years)"

seconds = ranged(
    decimal, f"a number of seconds >= 0, {_TEN_YEARS}", lambda v: 0 <= v <= MAX_SECONDS
)
positive_seconds = ranged(
    decimal, f"a number of seconds > 0, {_TEN_YEARS}", lambda v: 0 < v <= MAX_SECONDS
)
whole_seconds = ranged(
    integer, f"a whole number of seconds >= 0, {_TEN_YEARS}", lambda v: 0 <= v <= MAX_SECONDS
)
fraction = ranged(decimal, "a fraction between 0 and 1", lambda v: 0 <= v <= 1)
non_negative_int = ranged(
    integer, f"an integer from 0 to {MAX_COUNT}", lambda v: 0 <= v <= MAX_COUNT
)
port = ranged(integer, "a port between 0 and 65535", lambda v: 0 <= v <= 65535)
seed = ranged(integer, "an integer between -2^63 and 2^63-1", lambda v: -(2**63) <= v < 2**63)
count = ranged(integer, f"auto or an integer from 1 to {MAX_COUNT}", lambda v: 1 <= v <= MAX_COUNT)
MAX_WORKERS = 1024
workers = ranged(integer, f"an integer from 1 to {MAX_WORKERS}", lambda v: 1 <= v <= MAX_WORKERS)


def connections(text: str) -> int | None:
    """`auto` (None): derived from the descriptor limit when serving starts."""
    return None if text.strip().lower() == "auto" else int(count(text))


def switch(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("on", "off", "true", "false", "1", "0", "yes", "no"):
        raise ValueError("expected on or off")
    return value in ("on", "true", "1", "yes")


zstd_level = ranged(integer, "a zstd level from 1 to 19, or 0 (off)", lambda v: 0 <= v <= 19)


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


def plain(text: str) -> bool:
    """No spaces or control characters: what an address, a URL or a header value allows."""
    return all(c.isprintable() and not c.isspace() for c in text)


def host(text: str) -> str:
    """An address or name to listen on. An empty one would make aiohttp listen on every
    interface, the opposite of what an empty REPRO_HOST means (the default, loopback)."""
    text = text.strip()  # as numbers are: a newline left by a file the value was read from
    if not text or not plain(text) or not text.isascii():
        raise ValueError(
            "expected an address or host name to listen on, such as 127.0.0.1, or 0.0.0.0 / :: "
            "for every interface"
        )
    return text


def _http(text: str, expected: str) -> SplitResult:
    """The parts of an http:// or https:// URL with a host, parsed here: a port out of range,
    an unclosed [ or a stray space is then a line saying what was expected, not the HTTP
    client's traceback (or, for a newline, which urlsplit drops, another host)."""
    if not plain(text):
        raise ValueError(f"{expected}, without spaces or control characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        port = 0
    else:
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(expected)
    if port == 0:
        raise ValueError(f"{expected}, with a port from 1 to 65535 if any, an IPv6 address in [ ]")
    return parts


def upstream(text: str) -> str:
    text = text.strip()
    parts = _http(
        text, "expected an http:// or https:// base URL such as https://api.openai.com/v1"
    )
    if parts.username is not None:
        raise ValueError(
            "user:password@ in the base URL is never sent; the upstream's key comes with each "
            "request (Authorization, api-key)"
        )
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError(
            "a ?query or #fragment in the base URL is never sent: requests keep only its path"
        )
    return text.rstrip("/")


def http_url(text: str) -> str:
    """The base URL of a server a command talks to (a proxy, an upstream): the command adds
    its paths, which a #fragment would swallow."""
    parts = _http(text, "expected an http:// or https:// URL such as http://127.0.0.1:8080")
    if parts.fragment or "#" in text:
        raise ValueError("a base URL takes no #fragment")
    return text


def proxy_url(text: str) -> str:
    """A running proxy's own address, under which its /admin and /healthz routes lie. The
    SDK's base URL (with /v1) is refused: the command would ask /v1/admin/…, which the proxy
    passes to the upstream, admin token and all."""
    http_url(text)
    if urlsplit(text).path.rstrip("/").lower().endswith("/v1"):
        raise ValueError(
            "expected the proxy's own address such as http://127.0.0.1:8080, without the /v1 "
            "of the SDK's base URL"
        )
    return text


MAX_FILE = 16 * 1024 * 1024
"""Above any PEM bundle or key: a larger file is a wrong path, not one to read at start."""


def readable_file(text: str) -> str:
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise ValueError("expected a readable file (not a directory, a device or a pipe)")
    if os.path.getsize(text) > MAX_FILE:
        raise ValueError(f"expected a PEM file, not one of more than {MAX_FILE} bytes")
    return text


def header_token(text: str) -> str:
    """A token as an HTTP header carries it: printable ASCII, and stripped, as the proxy reads a
    bearer and `repro-proxy stats` sends one (a token ending in a newline, as a mounted secret
    file often does, matched no request)."""
    text = text.strip()
    if not text:
        raise ValueError("expected a token, not blanks")
    if not (text.isascii() and text.isprintable()):
        raise ValueError(
            "expected printable ASCII, as an HTTP header carries it (a stray newline, tab or "
            "typographic quote?)"
        )
    return text


MIN_SECRET = 16
"""Bytes a --secret has at least: fewer are guessed, and the API keys hashed with it with them."""


def secret(text: str) -> str:
    """The HMAC secret, without the one newline a mounted secret file ends with (as a token is
    read): every replica must hash with the same bytes, whichever way it was given them."""
    text = text.removesuffix("\n").removesuffix("\r")
    if not text.strip():
        raise ValueError("expected a secret, not blanks")
    if not text.isprintable():
        raise ValueError(
            "expected printable characters (a stray newline, tab or control character, or a byte "
            "the locale does not decode?)"
        )
    if len(text.encode()) < MIN_SECRET:
        raise ValueError(
            f"expected at least {MIN_SECRET} bytes, such as the output of openssl rand -hex 32"
        )
    return text


def cassette(text: str) -> str:
    """A JSONL file to read at start and write at exit: a directory, a device or a pipe is
    neither, and a missing directory would lose the recording only at exit."""
    if not text or not plain(text[:1] + text[-1:]):
        raise ValueError("expected the path of a JSONL file")
    if os.path.exists(text):
        if not os.path.isfile(text):
            raise ValueError("expected a regular file (not a directory, a device or a pipe)")
        return text
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise ValueError(f"no directory {folder!r} to write it in")
    return text


def store_url(text: str) -> str:
    text = text.strip()
    check_url(text)
    return text
