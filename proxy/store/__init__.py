"""Storage backends, and `open_store`, which builds the one the `--store` URL names."""

from __future__ import annotations

import contextlib
import re
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisClusterException, RedisError

from proxy.store.base import Store, StoreError
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore

__all__ = ["MemoryStore", "RedisStore", "Store", "StoreError", "open_store", "parse_size"]

_SIZE = re.compile(r"(\d+)\s*(?:([KMG])(?:iB)?)?", re.IGNORECASE)
_UNITS = {None: 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_size(text: str) -> int:
    """Bytes from `1048576`, `512K`, `16MiB`, `1G`; units are binary, as memory is sized."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid size {text!r}: use bytes or a K, M, G, KiB, MiB or GiB suffix")
    number, unit = match.groups()
    return int(number) * _UNITS[unit and unit.upper()]


async def open_store(url: str, invalidations: str = "", deadline: float | None = None) -> Store:
    """The store for a `--store` URL; a Redis that is down now does not stop the proxy starting.

    `invalidations` names the pub/sub channel Redis writes announce themselves on (near-caches);
    `deadline` bounds each Redis call (see RedisStore).
    """
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return _open_memory(parts)
    if parts.scheme in ("redis", "rediss"):
        client = await _open_redis(parts)
        return RedisStore(client, invalidations=invalidations, deadline=deadline)
    raise ValueError(
        f"--store: unsupported URL scheme {parts.scheme!r}; use memory://, redis:// or rediss://"
    )


def _open_memory(parts: SplitResult) -> MemoryStore:
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(options.keys() - {"max_bytes"})
    if unknown:
        raise ValueError(f"--store: unknown memory:// option {unknown[0]!r}; known: max_bytes")
    if "max_bytes" not in options:
        return MemoryStore()
    try:
        return MemoryStore(max_bytes=parse_size(options["max_bytes"]))
    except ValueError as exc:
        raise ValueError(f"--store max_bytes: {exc}") from None


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
        raise ValueError(f"--store: cluster={values[-1]!r} is not a boolean (true or false)")
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
