"""Compressed request bodies that do not end where their format says they end, against a real
proxy process: cut short (a gzip without its trailer, a stream without its last block, a second
gzip member begun and not finished) or followed by bytes past the end. The server inflates what
is there; unless the end is checked, a handler reads a prefix as if it were the whole body, and
caches it (a cached route) or forwards it as a whole request (a pass-through route)."""

from __future__ import annotations

import gzip
import socket
import zlib
from collections.abc import Iterator

import httpx
import orjson
import pytest
import zstandard
from openai import OpenAI

from bench.procs import wait_until
from tests.e2e.test_e2e_errors import AUTH, assert_error, post
from tests.e2e.test_upstream_attacks import echo_digest
from tests.fixtures_procs import Proxy, ProxyFactory, Sim
from tests.hostile import Scripted

CHAT = orjson.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "cut short"}]}
)
# Whole, the body below is no JSON; cut at the flush after CHAT and its spaces, it inflates to
# JSON: the prefix is what a reader that does not check the end would take for the body.
PREFIX = CHAT + b" " * 64
TAIL = b"and the rest, which makes the whole no JSON"
GZIP, ZLIB, RAW = 31, 15, -15


def flushed(wbits: int, *parts: bytes) -> list[bytes]:
    """One compressed stream in pieces, each ending at a sync flush: the pieces before any
    point inflate to exactly the parts before it."""
    compressor = zlib.compressobj(wbits=wbits)
    pieces = [compressor.compress(part) + compressor.flush(zlib.Z_SYNC_FLUSH) for part in parts]
    return [*pieces, compressor.flush()]


def whole(coding: str) -> bytes:
    return gzip.compress(CHAT) if coding == "gzip" else zlib.compress(CHAT)


BROKEN = {
    "gzip-without-trailer": ("gzip", gzip.compress(CHAT)[:-8]),
    "gzip-cut-at-a-flush": ("gzip", flushed(GZIP, PREFIX, TAIL)[0]),
    "gzip-then-a-member-cut-short": ("gzip", gzip.compress(CHAT) + gzip.compress(b" ")[:12]),
    "gzip-then-one-byte": ("gzip", gzip.compress(CHAT) + b"\x1f"),
    "gzip-then-garbage": ("gzip", gzip.compress(CHAT) + b"garbage"),
    "deflate-without-checksum": ("deflate", zlib.compress(CHAT)[:-4]),
    "deflate-cut-at-a-flush": ("deflate", flushed(ZLIB, PREFIX, TAIL)[0]),
    "raw-deflate-cut-at-a-flush": ("deflate", flushed(RAW, PREFIX, TAIL)[0]),
    "deflate-then-garbage": ("deflate", zlib.compress(CHAT) + b"garbage"),
}


def send(
    proxy: Proxy, body: bytes, coding: str, path: str, chunked: bool = False
) -> httpx.Response:
    """POST `body` as `coding`, with its length, or chunked in two pieces."""
    if not chunked:
        return post(proxy, body, path, **{"Content-Encoding": coding})
    pieces: Iterator[bytes] = iter([body[:10], body[10:]])
    headers = {**AUTH, "Content-Encoding": coding}
    return httpx.post(proxy.v1 + path, content=pieces, headers=headers, timeout=10)


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("case", BROKEN)
def test_a_compressed_body_that_does_not_end_where_it_says_is_a_400_and_nothing_is_stored(
    proxy: Proxy, sim: Sim, case: str, chunked: bool
) -> None:
    coding, body = BROKEN[case]
    assert_error(send(proxy, body, coding, "/chat/completions", chunked), 400, "invalid_body")
    assert sim.llm_requests() == []
    first = send(proxy, whole(coding), coding, "/chat/completions", chunked)
    assert first.status_code == 200, first.text
    assert first.headers["X-Repro-Cache"] == "MISS"  # the prefix was not stored under its key
    again = send(proxy, whole(coding), coding, "/chat/completions", chunked)
    assert again.headers["X-Repro-Cache"] == "HIT"
    assert len(sim.llm_requests()) == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("case", BROKEN)
def test_a_compressed_pass_through_body_that_does_not_end_where_it_says_reaches_nothing_whole(
    start_proxy: ProxyFactory, case: str, chunked: bool
) -> None:
    coding, body = BROKEN[case]
    with Scripted(echo_digest) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        assert_error(send(proxy, body, coding, "/files", chunked), 400, "invalid_body")
        wait_until(lambda: upstream.open_now == 0, "the upstream connection closed", 5)
        assert upstream.received == []  # no request ever ended, so none was answered
        assert all(PREFIX.startswith(cut.body) for cut in upstream.cut)
        good = send(proxy, whole(coding), coding, "/files", chunked)
    assert good.status_code == 200, good.text
    (received,) = upstream.received
    assert received.body == CHAT
    assert "content-encoding" not in received.headers


def test_a_pass_through_body_cut_while_it_streams_upstream_is_aborted_there(
    start_proxy: ProxyFactory,
) -> None:
    """The inflated prefix is on its way upstream when the client ends its body short: the
    upstream sees its request cut off, never ended with the last chunk."""
    first, *_ = flushed(GZIP, PREFIX, TAIL)
    head = (
        b"POST /v1/files HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer sk-a\r\n"
        b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with Scripted(echo_digest) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(head + b"%x\r\n%s\r\n" % (len(first), first))
            wait_until(lambda: upstream.connections == 1, "the proxy calling the upstream", 5)
            sock.sendall(b"0\r\n\r\n")
            answer = sock.recv(65536)
        wait_until(lambda: upstream.open_now == 0, "the upstream connection closed", 5)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert b"invalid_body" in answer
    assert upstream.received == []
    (cut,) = upstream.cut  # the prefix went upstream, and then the connection closed on it
    assert cut.request_line == "POST /v1/files HTTP/1.1"
    assert cut.body == PREFIX


# zlib's header, empty blocks that are not the last, the last (empty too) and the checksum of
# nothing: bytes sent that inflate to nothing at all.
EMPTY_BLOCKS = (
    b"\x78\x9c" + b"\x00\x00\x00\xff\xff" * 400 + b"\x01\x00\x00\xff\xff" + b"\x00\x00\x00\x01"
)


def test_a_compressed_body_is_bounded_by_the_bytes_sent_too(start_proxy: ProxyFactory) -> None:
    """Blocks that inflate to nothing would let a client send for ever under a bound on the
    inflated size alone."""
    assert zlib.decompress(EMPTY_BLOCKS) == b"" and len(EMPTY_BLOCKS) > 1024
    with Scripted(echo_digest) as upstream:
        proxy = start_proxy("--max-body", "1KiB", upstream=upstream.v1)
        for path in ("/chat/completions", "/files"):
            refused = send(proxy, EMPTY_BLOCKS, "deflate", path, chunked=True)
            assert_error(refused, 413, "request_too_large")
        wait_until(lambda: upstream.open_now == 0, "the upstream connection closed", 5)
    assert upstream.received == []


# A zstd frame that declares (and inflates to) 64 MiB from a few kilobytes, over any --max-body.
ZSTD_BOMB = zstandard.ZstdCompressor().compress(bytes(64 << 20))


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("zstd", zstandard.ZstdCompressor().compress(CHAT)),
        ("zstd", ZSTD_BOMB),
        ("br", b"bytes the proxy does not read"),
        ("x-gzip", gzip.compress(CHAT)),
        ("gzip, gzip", gzip.compress(gzip.compress(CHAT))),
    ],
    ids=["zstd", "zstd-bomb", "br", "x-gzip", "gzip-twice"],
)
def test_a_body_in_a_coding_the_proxy_does_not_inflate_is_never_read_as_plain(
    start_proxy: ProxyFactory, coding: str, body: bytes
) -> None:
    """A cached route must read the JSON: it refuses with 415, naming the codings it reads,
    without inflating a byte (a zstd bomb is not allocated). A pass-through route forwards the
    body exactly as sent, with its own Content-Encoding and length, for the upstream to read."""
    with Scripted(echo_digest) as upstream:
        proxy = start_proxy("--max-body", "1MiB", upstream=upstream.v1)
        refused = send(proxy, body, coding, "/chat/completions")
        assert_error(refused, 415, "unsupported_content_encoding")
        assert refused.headers["Accept-Encoding"] == "identity, gzip, deflate"
        assert "gzip or deflate" in refused.json()["error"]["message"]
        forwarded = send(proxy, body, coding, "/files")
    assert forwarded.status_code == 200, forwarded.text
    (received,) = upstream.received
    assert received.body == body
    assert received.headers["content-encoding"] == coding
    assert received.headers["content-length"] == str(len(body))


def test_a_coding_named_on_two_lines_is_read_as_both(start_proxy: ProxyFactory) -> None:
    """`Content-Encoding: gzip` twice is the list `gzip, gzip`. Read by its first line alone,
    the body was inflated once and forwarded without its coding: the upstream got gzip bytes
    labelled plain, a mix of inflated framing and compressed bytes. Now as on one line: a
    cached route refuses it, a pass-through forwards it exactly as sent."""
    body = gzip.compress(gzip.compress(CHAT))
    headers = [*AUTH.items(), ("Content-Encoding", "gzip"), ("Content-Encoding", "gzip")]
    with Scripted(echo_digest) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        cached = httpx.post(proxy.v1 + "/chat/completions", content=body, headers=headers)
        forwarded = httpx.post(proxy.v1 + "/files", content=body, headers=headers)
    assert_error(cached, 415, "unsupported_content_encoding")
    assert forwarded.status_code == 200, forwarded.text
    (received,) = upstream.received
    assert received.body == body
    assert received.head.count(b"\r\nContent-Encoding: gzip") == 2
    assert received.headers["content-length"] == str(len(body))


def test_a_body_labelled_identity_or_gzip_is_read_on_a_cached_route(proxy: Proxy, sim: Sim) -> None:
    """The codings the 415 names are the ones read: the SDK's plain body labelled `identity`,
    and the same request gzipped, are one cached answer."""
    message = [{"role": "user", "content": "cut short"}]
    with OpenAI(base_url=proxy.v1, api_key="sk-alice", max_retries=0) as sdk:
        first = sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=message, extra_headers={"Content-Encoding": "identity"}
        )
    assert first.headers["X-Repro-Cache"] == "MISS"
    again = send(proxy, gzip.compress(CHAT), "gzip", "/chat/completions")
    assert again.status_code == 200, again.text
    assert again.headers["X-Repro-Cache"] == "HIT"
    assert len(sim.llm_requests()) == 1
