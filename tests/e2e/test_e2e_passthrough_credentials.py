"""Credentials given twice on the pass-through routes (any path the proxy does not cache,
forwarded as sent), against a real proxy in front of an upstream that records what arrives.

The cacheable routes refuse a credential header or query parameter whose lines disagree (see
tests/e2e/test_e2e_duplicate_headers.py); a pass-through forwarded them, for a gateway in front
to authorize by one value while the upstream acted on the other, and `DELETE
/v1/responses/{id}` had the upstream delete before the proxy, reading the caller's partition
by every line, refused the request: the client was told 400 about a deletion that took place,
and the proxy went on answering with the deleted response."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from tests.fixtures_procs import Proxy, ProxyFactory, raw_answer
from tests.hostile import Received, Scripted, fixed, http_answer

ANSWER = http_answer(b'{"object": "list", "data": []}', "Content-Type: application/json")


@pytest.fixture
def upstream() -> Iterator[Scripted]:
    with Scripted(fixed(ANSWER)) as scripted:
        yield scripted


def ask(proxy: Proxy, method: bytes, target: bytes, *headers: bytes) -> tuple[int, bytes]:
    """Status and body of the proxy's answer to a raw request with these header lines."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: localhost", b"Connection: close"]
    body = b'{"purpose": "batch"}' if method == b"POST" else b""
    lines += [*headers, b"Content-Length: %d" % len(body)]
    status, _, answer = raw_answer(proxy.port, b"\r\n".join(lines) + b"\r\n\r\n" + body)
    return status, answer


def refused(answer: bytes) -> tuple[str, str]:
    error = orjson.loads(answer)["error"]
    assert error["type"] == "invalid_request_error"
    return error["code"], error["param"]


def lines_of(received: Received, name: str) -> list[str]:
    """Every value of header `name` (lower case) as it arrived upstream, in order."""
    found = []
    for line in received.head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            found.append(value.strip())
    return found


TARGETS = [
    (b"GET", b"/v1/models"),
    (b"POST", b"/v1/files"),
    (b"GET", b"/v1/responses/resp_abc"),
    (b"DELETE", b"/v1/responses/resp_abc"),
    (b"GET", b"/openai/deployments?api-version=2024-10-21"),
]
DISAGREEING = [
    ([b"Authorization: Bearer sk-a", b"Authorization: Bearer sk-b"], "authorization"),
    ([b"Authorization: Bearer sk-a", b"Authorization: Basic eDp5"], "authorization"),
    ([b"api-key: sk-a", b"Api-Key: sk-b"], "api-key"),
    ([b"X-Auth-Token: t-a", b"X-Auth-Token: t-b"], "x-auth-token"),
]


def with_query(target: bytes, query: bytes) -> bytes:
    return target + (b"&" if b"?" in target else b"?") + query


def test_disagreeing_credentials_are_refused_on_every_pass_through_before_the_upstream(
    start_proxy: ProxyFactory, upstream: Scripted
) -> None:
    """Before: each was forwarded as sent (the DELETE too, then answered 400 once the upstream
    had deleted); now 400 `invalid_header` naming the credential, as on the cacheable routes."""
    proxy = start_proxy(upstream=upstream.v1)
    for method, target in TARGETS:
        for headers, name in DISAGREEING:
            for lines in (headers, headers[::-1]):
                status, answer = ask(proxy, method, target, *lines)
                assert status == 400, (method, target, lines, answer)
                assert refused(answer) == ("invalid_header", name)
        for query, why in [
            (b"api-key=sk-a&api-key=sk-b", ("invalid_header", "api-key")),
            (b"key=sk-a;key=sk-b", ("invalid_value", "query")),  # a ';' beside a credential
        ]:
            status, answer = ask(proxy, method, with_query(target, query))
            assert status == 400, (method, target, query, answer)
            assert refused(answer) == why
    assert upstream.received == []


def test_agreeing_lines_and_credentials_under_different_names_pass_as_sent(
    start_proxy: ProxyFactory, upstream: Scripted
) -> None:
    """Identical lines read alike, and a header beside a query parameter (or another header)
    names each value by where it is, as on the cacheable routes: forwarded unchanged."""
    proxy = start_proxy(upstream=upstream.v1)
    twice = (b"Authorization: Bearer sk-a", b"Authorization: Bearer sk-a")
    assert ask(proxy, b"GET", b"/v1/models", *twice)[0] == 200
    assert lines_of(upstream.received[-1], "authorization") == ["Bearer sk-a"] * 2
    cookies = (b"Authorization: Bearer sk-a", b"Cookie: a=1", b"Cookie: b=2")
    assert ask(proxy, b"POST", b"/v1/files", *cookies)[0] == 200
    assert lines_of(upstream.received[-1], "cookie") == ["a=1", "b=2"]
    beside = (b"Authorization: Bearer sk-a", b"api-key: sk-b")
    assert ask(proxy, b"GET", b"/v1/models?api-key=sk-c", *beside)[0] == 200
    assert upstream.received[-1].request_line == "GET /v1/models?api-key=sk-c HTTP/1.1"
    assert lines_of(upstream.received[-1], "api-key") == ["sk-b"]
    assert len(upstream.received) == 3


def test_a_deletion_is_refused_for_disagreeing_keyed_lines_before_the_upstream_deletes(
    start_proxy: ProxyFactory, upstream: Scripted
) -> None:
    """The proxy forgets a deleted response in the caller's partition, named by its keyed
    lines too. Before: the upstream deleted, then the proxy refused the lines (400) and forgot
    nothing. Other pass-throughs read no keyed header: two lines go on as sent."""
    proxy = start_proxy(upstream=upstream.v1)
    orgs = (b"Authorization: Bearer sk-a", b"OpenAI-Organization: o-a", b"OpenAI-Organization: o-b")
    status, answer = ask(proxy, b"DELETE", b"/v1/responses/resp_abc", *orgs)
    assert status == 400, answer
    assert refused(answer) == ("invalid_header", "openai-organization")
    assert upstream.received == []
    assert ask(proxy, b"GET", b"/v1/models", *orgs)[0] == 200
    assert lines_of(upstream.received[-1], "openai-organization") == ["o-a", "o-b"]
