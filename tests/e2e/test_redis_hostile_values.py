"""Values another writer to the proxy's Redis leaves where the proxy reads (an older or newer
replica, a buggy client, anyone with write access): each reads as absent, a MISS answered from
the upstream, never a dropped connection, a 500 or a wait (docs/security.md)."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import httpx
import pytest
import redis

from proxy.core.codec import Codec
from tests.fixtures_procs import Proxy, ProxyFactory


def ask(proxy: Proxy, content: str) -> httpx.Response:
    return proxy.chat(content, timeout=60)


def stored(client: redis.Redis, proxy: Proxy, content: str) -> tuple[bytes, bytes, bytes]:
    """Ask once, and return the entry's key, its one fingerprint field and that field's value."""
    before = set(client.scan_iter("repro:e:*"))
    assert ask(proxy, content).headers["X-Repro-Cache"] == "MISS"
    (key,) = set(client.scan_iter("repro:e:*")) - before
    ((field, value),) = [(f, v) for f, v in client.hgetall(key).items() if f[:1] != b"\x00"]
    return key, field, value


@pytest.mark.parametrize(
    "forgery",
    [
        {"fingerprint": "fp\r\nX-Injected: 1"},
        {"fingerprint": "f" * 100_000},
        {"content_type": "application/json\r\nX-Injected: 1"},
        {"content_type": "x" * 100_000},
        {"prompt_tokens": -1},
        {"completion_tokens": -(2**40)},
        {"stored_at": 1e300},
        {"stored_at": -1e18},
    ],
    ids=[
        *("crlf-fingerprint", "long-fingerprint", "crlf-type", "long-type", "tokens"),
        *("negative", "stored-after-any-date", "stored-before-1970"),
    ],
)
def test_an_entry_whose_fields_no_answer_has_is_a_miss(
    start_proxy: ProxyFactory, redis_url: str, forgery: dict[str, object]
) -> None:
    """A well-formed value whose fields say what no upstream answer can (a header split by CR LF,
    a count below zero, which a metric cannot count) reaches the response's headers or the
    metrics on a HIT: it is no answer, and reads as absent."""
    proxy = start_proxy("--store", redis_url, "--near-cache", "0")
    client = redis.Redis.from_url(redis_url)
    key, field, value = stored(client, proxy, "forged fields")
    entry = Codec().unpack(value)
    client.hset(key, field, Codec().pack(entry._replace(**{"stored_at": time.time(), **forgery})))

    answer = ask(proxy, "forged fields")
    assert (answer.status_code, answer.headers["X-Repro-Cache"]) == (200, "MISS")
    assert "X-Injected" not in answer.headers
    assert answer.json()["choices"][0]["message"]["content"]
    assert proxy.store_errors().get("unreadable", 0) >= 1


def test_a_fill_lock_left_without_expiry_is_bounded_by_the_first_miss_it_holds(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    """A lock no leader holds (a crashed writer of another version, a client's SET) made every
    miss of its key wait the whole --lock-timeout for as long as it stayed; the first miss to
    wait on it gives it that timeout, so it holds no one after."""
    proxy = start_proxy("--store", redis_url, "--near-cache", "0", "--lock-timeout", "1")
    client = redis.Redis.from_url(redis_url)
    key = ask(proxy, "locked out").headers["X-Repro-Key"]
    client.delete(f"repro:e:{{{key}}}")
    client.set(f"repro:l:{{{key}}}", b"nobody's")

    answer = ask(proxy, "locked out")
    assert (answer.status_code, answer.headers["X-Repro-Cache"]) == (200, "MISS")
    assert client.pttl(f"repro:l:{{{key}}}") in (-2, *range(1, 1001))


def _head(value: bytes, raw: int) -> bytes:
    return value[:2] + struct.pack(">I", raw) + value[6:]


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda v: b"\x07" + v[1:], id="format"),
        pytest.param(lambda v: v[: len(v) // 2], id="truncated"),
        pytest.param(lambda v: v[:1], id="short"),
        pytest.param(lambda v: _head(v, 0xFFFFFFFF), id="claims-4GiB"),
        pytest.param(lambda v: _head(v, len(v) * 1000), id="claims-more-than-its-frame"),
        pytest.param(lambda v: b"\x02\x02" + v[2:6] + b"\xde\xad\xbe\xef" + v[6:], id="dictionary"),
        pytest.param(lambda v: b"\x02\x09" + v[2:], id="codec"),
    ],
)
def test_a_value_that_is_no_entry_is_a_counted_miss(
    start_proxy: ProxyFactory, redis_url: str, forge: Callable[[bytes], bytes]
) -> None:
    proxy = start_proxy("--store", redis_url, "--near-cache", "0")
    client = redis.Redis.from_url(redis_url)
    key, field, value = stored(client, proxy, "no entry")
    client.hset(key, field, forge(value))
    answer = ask(proxy, "no entry")
    assert (answer.status_code, answer.headers["X-Repro-Cache"]) == (200, "MISS")
    assert proxy.store_errors().get("unreadable") == 1
    assert ask(proxy, "no entry").headers["X-Repro-Cache"] == "HIT"  # written over


def test_a_key_of_another_type_or_with_odd_fields_is_read_as_far_as_it_can_be(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    proxy = start_proxy("--store", redis_url, "--near-cache", "0")
    client = redis.Redis.from_url(redis_url)
    key, _, _ = stored(client, proxy, "odd fields")
    client.hset(key, mapping={b"\xff\xfe": b"x", b"fp_other": b"not an entry", b"": b""})
    assert ask(proxy, "odd fields").headers["X-Repro-Cache"] == "HIT"

    client.delete(key)
    client.set(key, b"a string where a hash belongs")
    for _ in range(4):
        answer = ask(proxy, "odd fields")
        assert (answer.status_code, answer.headers["X-Repro-Cache"]) == (200, "MISS")
    assert proxy.store_errors()["get"] == 4  # refused (WRONGTYPE), counted
    assert httpx.get(proxy.url + "/readyz", timeout=10).status_code == 200  # circuit closed
