"""The store over `rediss://` against real redis-servers: TLS or nothing, never plain by
default, and a refused handshake says why in the store's error."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from proxy.store import StoreError, open_store, weakened_tls
from tests.egress_peers import Authority
from tests.fixtures_redis import RedisServer
from tests.fixtures_tls import TlsRedis


def pings(server: RedisServer) -> int:
    with redis.Redis(port=server.port) as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))


async def test_a_rediss_url_to_a_plain_redis_fails_instead_of_falling_back_to_plain(
    redis_server: RedisServer,
) -> None:
    before = pings(redis_server)
    plain = redis_server.url.replace("redis://", "rediss://", 1)
    # The handshake never completes (a plain Redis waits for a command line): each attempt
    # ends at its connect timeout, 1 s by default, four times over (cluster probe and ping,
    # each retried). A short one fails the same way, sooner.
    store = await open_store(plain + "?socket_connect_timeout=0.2")
    try:
        with pytest.raises(StoreError, match="redis ping failed"):
            await store.ping()
    finally:
        await store.close()
    assert pings(redis_server) == before


async def test_a_certificate_the_ca_did_not_sign_is_a_store_error_saying_so(
    redis_tls: TlsRedis, tmp_path: Path
) -> None:
    stranger = Authority.create(tmp_path, "stranger")
    store = await open_store(redis_tls.url.replace(str(redis_tls.ca), str(stranger.pem)))
    try:
        with pytest.raises(StoreError) as info:
            await store.ping()
    finally:
        await store.close()
    assert str(info.value).startswith("redis ping failed: ConnectionError (TLS: ")
    assert "certificate" in str(info.value) and "_ssl.c" not in str(info.value)


async def test_ssl_cert_reqs_none_does_what_redis_py_says_and_is_named_weakened(
    redis_tls: TlsRedis, tmp_path: Path
) -> None:
    stranger = Authority.create(tmp_path, "stranger")
    url = redis_tls.url.replace(str(redis_tls.ca), str(stranger.pem)) + "&ssl_cert_reqs=none"
    store = await open_store(url)
    try:
        await store.ping()
    finally:
        await store.close()
    assert weakened_tls(url) == ["ssl_cert_reqs=none"]
