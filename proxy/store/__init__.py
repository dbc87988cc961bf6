"""Storage backends, and `open_store`, which builds the one the `--store` URL names."""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisClusterException, RedisError

from proxy.core.numbers import decimal, integer
from proxy.store.base import Store, StoreError
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from proxy.store.tls import check_tls, weakened

__all__ = [
    "MemoryStore",
    "RedisStore",
    "Store",
    "StoreError",
    "check_url",
    "open_store",
    "parse_size",
    "weakened_tls",
]

_SIZE = re.compile(r"([0-9]{1,30})\s*(?:([KMG])(?:iB)?)?", re.IGNORECASE | re.ASCII)
MAX_SIZE = 2**63 - 1
"""What a 64-bit counter (Redis, the JSON logs) holds; any size a setting may name is below."""
_UNITS = {None: 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_size(text: str) -> int:
    """Bytes from `1048576`, `512K`, `16MiB`, `1G`; units are binary, as memory is sized."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError("expected a number of bytes, or with a K, M, G, KiB, MiB or GiB suffix")
    number, unit = match.groups()
    size = int(number) * _UNITS[unit and unit.upper()]
    if size > MAX_SIZE:
        raise ValueError("expected a number of bytes below 2^63")
    return size


_REDIS_OPTIONS = frozenset(n for n in URL_QUERY_ARGUMENT_PARSERS if not n.startswith("ssl_")) | {
    "cluster",
    "client_name",
    "password",
    "username",
}
_TLS_OPTIONS = frozenset(
    {"ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_ciphers"}
) | {name for name in URL_QUERY_ARGUMENT_PARSERS if name.startswith("ssl_")}


def check_url(url: str) -> None:
    """Refuse a `--store` URL whose options we or redis-py would not understand, before anything
    connects: redis-py passes an unknown query option on to a constructor, which fails with a
    TypeError far from the typo."""
    parts = urlsplit(url)
    if any(not c.isprintable() or c.isspace() for c in url):
        raise ValueError("expected a URL without spaces or control characters")
    if parts.fragment or url.endswith("#"):
        raise ValueError("a #fragment means nothing to a store: remove it")
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = [name for name, _ in query]
    if twice := sorted({name for name in names if names.count(name) > 1}):
        raise ValueError(f"option {twice[0]!r} given twice")
    if parts.scheme == "memory":
        if parts.netloc or parts.path.strip("/"):
            raise ValueError("memory:// takes no host or path, only ?max_bytes=")
        _memory_size(parts)
        return
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("expected memory://, redis://… or rediss://…")
    known = _REDIS_OPTIONS | (_TLS_OPTIONS if parts.scheme == "rediss" else frozenset())
    for name, value in query:
        if name in _TLS_OPTIONS and parts.scheme == "redis":
            raise ValueError(f"{name} is a TLS option: it needs a rediss:// URL")
        if name not in known:
            raise ValueError(_unknown(name, parts.scheme, known))
        _check_number(name, value)
    _cluster_flag([value for name, value in query if name == "cluster"])
    try:
        parse_url(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{exc} (see redis-py's connection URL options)") from None
    if port == 0:
        raise ValueError("port 0 cannot be connected to: expected 1 to 65535")
    if parts.path.strip("/"):
        _check_number("db", parts.path.strip("/"))
    if parts.scheme == "rediss":
        check_tls(dict(query))


def weakened_tls(url: str) -> list[str]:
    """The options of a `rediss://` URL that turn a check of the server's certificate off."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return []
    return weakened(dict(parse_qsl(parts.query, keep_blank_values=True)))


_NUMBERS: dict[str, tuple[Callable[[str], float], float, str]] = {
    "db": (integer, 0, "a database number >= 0"),
    "max_connections": (integer, 1, "an integer >= 1"),
    "health_check_interval": (integer, 0, "a number of seconds >= 0"),
    "socket_timeout": (decimal, 0, "a number of seconds > 0"),
    "socket_connect_timeout": (decimal, 0, "a number of seconds > 0"),
    "timeout": (decimal, 0, "a number of seconds > 0"),
}
_MAX_OPTION = 2**31 - 1


def _check_number(name: str, text: str) -> None:
    """redis-py casts these with int() and float(), which take NaN, `-1` and `١٢`: each would
    fail far from the URL, once connecting, or never (a timeout of NaN)."""
    if name not in _NUMBERS:
        return
    cast, low, expected = _NUMBERS[name]
    try:
        value = cast(text)
    except ValueError:
        value = None
    strict = cast is decimal  # a timeout of 0 would fail every call
    if value is None or value < low or (strict and value == low) or value > _MAX_OPTION:
        raise ValueError(f"{name}={text!r}: expected {expected}")


def _unknown(name: str, scheme: str, known: frozenset[str]) -> str:
    closest = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean {closest[0]!r}? " if closest else ""
    return f"unknown {scheme}:// option {name!r}; {hint}known: {', '.join(sorted(known))}"


INVALIDATIONS = "repro:invalidate"
"""The pub/sub channel every writer to a Redis store announces its changes on, for the
replicas' near-caches: a writer that announced nothing (a replica without a near-cache of its
own, `import --store`) had them serve what they held before, for as long as they held it."""


async def open_store(
    url: str, invalidations: str = INVALIDATIONS, deadline: float | None = None
) -> Store:
    """The store for a `--store` URL; a Redis that is down now does not stop the proxy starting.

    `invalidations` names the pub/sub channel Redis writes announce themselves on (near-caches);
    `deadline` bounds each Redis call (see RedisStore).
    """
    try:
        check_url(url)
    except ValueError as exc:
        raise ValueError(f"--store: {exc}") from None
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return _open_memory(parts)
    if parts.scheme in ("redis", "rediss"):
        client = await _open_redis(parts)
        return RedisStore(client, invalidations=invalidations, deadline=deadline)
    raise AssertionError(parts.scheme)  # check_url refused it


def _open_memory(parts: SplitResult) -> MemoryStore:
    size = _memory_size(parts)
    return MemoryStore() if size is None else MemoryStore(max_bytes=size)


def _memory_size(parts: SplitResult) -> int | None:
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(options.keys() - {"max_bytes"})
    if unknown:
        raise ValueError(_unknown(unknown[0], "memory", frozenset({"max_bytes"})))
    if "max_bytes" not in options:
        return None
    try:
        size = parse_size(options["max_bytes"])
    except ValueError as exc:
        raise ValueError(f"max_bytes: {exc}") from None
    if size <= 0:
        raise ValueError("max_bytes: expected a size > 0")
    return size


async def _open_redis(parts: SplitResult) -> Redis | RedisCluster:
    """`?cluster=true|false` decides; without it, a reachable server is asked whether it is one."""
    query = parse_qsl(parts.query, keep_blank_values=True)
    cluster = _cluster_flag([value for name, value in query if name == "cluster"])
    rest = urlencode([(name, value) for name, value in query if name != "cluster"])
    url = urlunsplit(parts._replace(query=rest))
    try:
        if cluster:
            return await _cluster(url)
        client = Redis.from_url(url, **_client_options())
        if cluster is None and await _is_cluster(client):
            await client.aclose()
            return await _cluster(url)
    except RedisClusterException as exc:
        raise ValueError(f"--store: {exc}") from None
    return client


async def _cluster(url: str) -> RedisCluster:
    """Learn the topology before the first burst of requests: concurrent first commands on an
    uninitialized redis-py cluster client race each other and fail."""
    client = RedisCluster.from_url(url, **_client_options())
    with contextlib.suppress(RedisError, RedisClusterException, OSError):
        await client.initialize()
    return client


def _cluster_flag(values: list[str]) -> bool | None:
    if not values:
        return None
    value = values[-1].lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(f"cluster={values[-1]!r} is not a boolean: expected true or false")
    return value in _TRUE


async def _is_cluster(client: Redis) -> bool:
    """A server that does not answer at boot counts as standalone: the store fails open later."""
    try:
        info = await client.info("cluster")
    except (RedisError, OSError):
        return False
    return bool(info.get("cluster_enabled"))


def _client_options() -> dict[str, Any]:
    """Fail fast: the proxy serves without the store rather than wait seconds for it."""
    return {
        "socket_timeout": 1.0,
        "socket_connect_timeout": 1.0,
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
        "health_check_interval": 0,
    }
