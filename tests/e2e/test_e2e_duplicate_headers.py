"""Headers sent more than once, against a real proxy in front of an upstream that records what
it receives and answers by the first credential line it reads, as many servers do.

The proxy scopes and keys by every line of a credential or keyed header, in any order, while an
upstream (or a gateway in front of the proxy) may read only one of them: lines that disagree are
refused, identical ones pass. Duplicates the HTTP parser already refuses are pinned here too."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator

import orjson
import pytest

from tests.fixtures_procs import Proxy, ProxyFactory, raw_answer
from tests.hostile import CHAT, Received, Scripted, completion, http_answer

PATH = b"/v1/chat/completions"


def first_credential(head: bytes) -> str:
    """The value of the first credential line of a request head: what the upstream answers by."""
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() in {"authorization", "api-key", "x-api-key"}:
            return value.strip()
    return ""


async def by_first_credential(writer: asyncio.StreamWriter, received: Received) -> None:
    answer = completion("answered for " + first_credential(received.head))
    writer.write(http_answer(answer, "Content-Type: application/json"))
    await writer.drain()


@pytest.fixture
def upstream() -> Iterator[Scripted]:
    with Scripted(by_first_credential) as scripted:
        yield scripted


def ask(
    proxy: Proxy, *headers: bytes, body: bytes = CHAT, path: bytes = PATH
) -> tuple[int, bytes, bytes]:
    """Status, head and body of the proxy's answer to a raw request with these header lines."""
    lines = [b"POST " + path + b" HTTP/1.1", b"Host: localhost", b"Connection: close"]
    lines += [b"Content-Type: application/json", *headers]
    if not any(h.lower().startswith((b"content-length:", b"transfer-encoding:")) for h in headers):
        lines.append(b"Content-Length: %d" % len(body))
    return raw_answer(proxy.port, b"\r\n".join(lines) + b"\r\n\r\n" + body)


def refused(answer: bytes) -> tuple[str, str]:
    error = orjson.loads(answer)["error"]
    assert error["type"] == "invalid_request_error"
    return error["code"], error["param"]


def swapped(lines: list[bytes]) -> list[bytes]:
    """The same lines with the last two (the disagreeing pair) in the other order."""
    return [*lines[:-2], lines[-1], lines[-2]]


DISAGREEING = [
    ([b"Authorization: Bearer sk-a", b"Authorization: Bearer sk-b"], "authorization"),
    ([b"Authorization: Bearer sk-a", b"Authorization: Basic eDp5"], "authorization"),
    ([b"api-key: sk-a", b"api-key: sk-b"], "api-key"),
    ([b"x-api-key: sk-a", b"X-Api-Key: sk-b"], "x-api-key"),
    (
        [
            b"Authorization: Bearer sk-a",
            b"OpenAI-Organization: org-a",
            b"OpenAI-Organization: org-b",
        ],
        "openai-organization",
    ),
]
IN_QUERY = [b"?api-key=sk-a&api-key=sk-b", b"?api-key=sk-b&api-key=sk-a"]


def test_disagreeing_lines_of_a_credential_or_keyed_header_are_refused_before_any_upstream(
    start_proxy: ProxyFactory, upstream: Scripted
) -> None:
    """Before: `Bearer sk-a, Bearer sk-b` and `Bearer sk-b, Bearer sk-a` made one partition (the
    scope hashes the lines sorted), answered upstream as sk-a, then served from the cache to the
    request the upstream would have answered as sk-b; so did two `?api-key=`."""
    proxy = start_proxy(upstream=upstream.v1)
    for headers, name in DISAGREEING:
        for lines in (headers, swapped(headers)):
            status, _, answer = ask(proxy, *lines)
            assert status == 400, (lines, answer)
            assert refused(answer) == ("invalid_header", name)
    for query in IN_QUERY:
        status, _, answer = ask(proxy, path=PATH + query)
        assert status == 400, (query, answer)
        assert refused(answer) == ("invalid_header", "api-key")
    assert upstream.received == []


def test_identical_lines_are_one_reading_and_pass(
    start_proxy: ProxyFactory, upstream: Scripted
) -> None:
    proxy = start_proxy(upstream=upstream.v1)
    twice = (b"Authorization: Bearer sk-a", b"Authorization: Bearer sk-a")
    assert ask(proxy, *twice)[0] == 200
    assert ask(proxy, b"Authorization: Bearer sk-a", b"Cookie: a=1", b"Cookie: b=2")[0] == 200
    assert [first_credential(r.head) for r in upstream.received] == ["Bearer sk-a"] * 2


def test_authorization_and_api_key_together_scope_by_which_value_is_where(
    start_proxy: ProxyFactory, upstream: Scripted
) -> None:
    """Two different credential headers are sound: the scope names each value with its header,
    so the same two keys swapped (answered upstream as the other tenant) share nothing."""
    proxy = start_proxy(upstream=upstream.v1)
    one = ask(proxy, b"Authorization: Bearer sk-a", b"api-key: sk-b")
    swapped = ask(proxy, b"Authorization: Bearer sk-b", b"api-key: sk-a")
    assert (one[0], swapped[0]) == (200, 200)
    assert b"answered for Bearer sk-a" in one[2]
    assert b"answered for Bearer sk-b" in swapped[2]
    assert b"X-Repro-Cache: MISS" in swapped[1]
    assert len(upstream.received) == 2


PARSER_REFUSED = [
    [b"Content-Type: text/plain"],  # a second one beside ask's
    [b"Host: other"],
    [b"Content-Length: %d" % len(CHAT)] * 2,
    [b"Content-Length: %d" % len(CHAT), b"Content-Length: 5"],
    [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
]


def test_framing_and_body_headers_twice_never_reach_the_upstream(
    start_proxy: ProxyFactory, upstream: Scripted
) -> None:
    """aiohttp's parser refuses these before the proxy reads them; pinned, as the proxy's
    keying (body bytes, JSON) relies on it."""
    proxy = start_proxy(upstream=upstream.v1)
    for lines in PARSER_REFUSED:
        status, _, answer = ask(proxy, b"Authorization: Bearer sk-a", *lines)
        assert status == 400, lines
        assert refused(answer)[0] == "invalid_http"
    assert upstream.received == []


def test_two_content_encoding_lines_are_read_together_and_refused(
    start_proxy: ProxyFactory, upstream: Scripted
) -> None:
    """Every line is read (`gzip, gzip`), never one of them: a coding list the proxy does not
    read is a 415, so no body is keyed by one decoding and sent as another."""
    proxy = start_proxy(upstream=upstream.v1)
    for second in (b"gzip", b"identity"):
        status, _, _ = ask(
            proxy,
            b"Authorization: Bearer sk-a",
            b"Content-Encoding: gzip",
            b"Content-Encoding: " + second,
            body=gzip.compress(gzip.compress(CHAT)),
        )
        assert status == 415, second
    assert upstream.received == []
