"""Attacks through the upstream boundary, against a real proxy process: a client smuggling a
request down a pooled upstream connection, and a hostile upstream framing, inflating, dripping
or dressing up its answers. Each upstream here is written for the attack (tests/hostile.py)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket
import threading
import time
import zlib
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from bench.procs import peak_rss_kib
from proxy.errors import InvalidBodyLength, UpstreamTooLarge
from proxy.upstream.client import StreamedBody, Upstream
from tests.fixtures_procs import CHUNKED_END, ProxyFactory, raw_exchange
from tests.hostile import Received, Scripted, completion, dripping_json, fixed, http_answer

AUTH = {"Authorization": "Bearer sk-victim", "Content-Type": "application/json"}


def chat(content: str) -> bytes:
    return orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    )


async def echo_digest(writer: asyncio.StreamWriter, request: Received) -> None:
    """Answers each request with the digest of the body it received: whoever gets an answer
    can tell whose request it answers."""
    writer.write(http_answer(completion(digest_of(request.body)), "Content-Type: application/json"))
    await writer.drain()


def digest_of(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


def test_a_gzip_body_cannot_smuggle_a_request_to_another_tenants_connection(
    start_proxy: ProxyFactory,
) -> None:
    victim_body = chat("the victim's question")
    smuggled_body = chat("the attacker's answer for everyone")
    smuggled = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        + b"Content-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(smuggled_body)
        + smuggled_body
    )
    inflated = b'{"purpose": "fine-tune"}' + smuggled
    compressed = gzip.compress(inflated)
    with Scripted(echo_digest) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        attack = (
            b"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sk-attacker\r\n"
            b"Content-Encoding: gzip\r\nContent-Type: application/json\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(compressed)
            + compressed
        )
        answer = raw_exchange(proxy.port, attack, until=CHUNKED_END)  # kept alive
        assert answer.startswith(b"HTTP/1.1 200")
        victim = httpx.post(
            proxy.v1 + "/chat/completions", content=victim_body, headers=AUTH, timeout=10
        )
        again = httpx.post(
            proxy.v1 + "/chat/completions", content=victim_body, headers=AUTH, timeout=10
        )
    lines = [r.request_line for r in upstream.received]
    assert lines == ["POST /v1/files HTTP/1.1", "POST /v1/chat/completions HTTP/1.1"]
    files, chat_call = upstream.received
    assert files.body == inflated  # the whole inflated body, as one request's body
    assert "content-encoding" not in files.headers
    assert files.headers.get("content-length") in (None, str(len(inflated)))
    assert victim.json()["choices"][0]["message"]["content"] == digest_of(chat_call.body)
    assert chat_call.body != smuggled_body
    assert again.headers["X-Repro-Cache"] == "HIT"
    assert again.content == victim.content


def test_an_identity_pass_through_body_goes_with_its_own_length(
    start_proxy: ProxyFactory,
) -> None:
    body = b'{"purpose": "batch"}' * 100
    with Scripted(echo_digest) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        answer = httpx.post(proxy.v1 + "/files", content=body, headers=AUTH, timeout=10)
    assert answer.status_code == 200
    (received,) = upstream.received
    assert received.body == body
    assert received.headers["content-length"] == str(len(body))
    assert answer.headers["X-Repro-Cache"] == "BYPASS"


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize(
    "parts",
    [
        (b"0123456789GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n",),
        (b"0123456789", b"GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        (b"01234",),
    ],
    ids=["longer-in-one-chunk", "longer-in-a-later-chunk", "shorter"],
)
async def test_a_streamed_body_that_breaks_its_declared_length_is_never_written_past_it(
    parts: tuple[bytes, ...],
) -> None:
    with Scripted(echo_digest) as scripted:
        upstream = Upstream(scripted.v1, 5, 5)
        try:
            with pytest.raises(InvalidBodyLength):
                response = await upstream.send(
                    "POST", "/v1/files", {}, StreamedBody(_chunks(*parts), 10)
                )
                await response.read(1 << 20)
            status, _ = await upstream.fetch("POST", "/v1/files", {}, b"next")
        finally:
            await upstream.close()
        await asyncio.sleep(0.1)
    assert status == 200
    assert all("smuggled" not in r.request_line for r in scripted.received)
    assert scripted.received[-1].body == b"next"
    assert len([r for r in scripted.received if r.body != b"next"]) <= 1


@pytest.mark.parametrize(
    "framing",
    [
        ("Content-Length: 5", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding: gzip",),
        ("Content-Length: 5", "Content-Length: 7"),
        # On two lines: a reader of the first one alone sees chunked, the HTTP client reads
        # the answer to the connection's end (gzip comes last).
        ("Transfer-Encoding: chunked", "Transfer-Encoding: gzip"),
    ],
    ids=["length-and-chunked", "not-chunked", "two-lengths", "chunked-then-gzip"],
)
def test_an_answer_framed_as_smugglers_frame_is_a_502_and_its_connection_closed(
    start_proxy: ProxyFactory, framing: tuple[str, ...]
) -> None:
    head = "\r\n".join(["HTTP/1.1 200 OK", "Content-Type: application/json", *framing, "", ""])
    with Scripted(fixed(head.encode() + b"5\r\nhello\r\n0\r\n\r\n")) as upstream:
        proxy = start_proxy("--cache-mode", "off", upstream=upstream.v1)
        first = httpx.post(proxy.v1 + "/chat/completions", content=chat("a"), headers=AUTH)
        second = httpx.post(proxy.v1 + "/chat/completions", content=chat("b"), headers=AUTH)
    assert (first.status_code, first.json()["error"]["code"]) == (502, "upstream_unreachable")
    assert second.status_code == 502
    assert upstream.connections == 2  # the first connection was not pooled


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        (b"Transfer-Encoding: gzip, chunked\r\n", "gzip, chunked"),
        # chunked may be applied once only (RFC 9112 7): a reader of one line sees it once
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "chunked, chunked"),
    ],
    ids=["gzip-then-chunked", "chunked-twice"],
)
def test_a_transfer_coding_besides_chunked_is_a_502(
    start_proxy: ProxyFactory, lines: bytes, named: str
) -> None:
    """Its framing is unambiguous (chunked comes last, so the connection may be reused), but
    the body is not what it says it is."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + lines + b"\r\n"
    with Scripted(fixed(head + b"5\r\nhello\r\n0\r\n\r\n")) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        first = httpx.post(proxy.v1 + "/chat/completions", content=chat("a"), headers=AUTH)
    assert (first.status_code, first.json()["error"]["code"]) == (502, "upstream_unreachable")
    assert named in first.json()["error"]["message"]


def test_upstream_headers_with_control_characters_never_reach_the_client(
    start_proxy: ProxyFactory,
) -> None:
    answer = http_answer(
        completion("fine"), "Content-Type: application/json", "X-Evil: a\x01b", "X-Good: yes"
    )
    with Scripted(fixed(answer)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        first = httpx.post(proxy.v1 + "/chat/completions", content=chat("h"), headers=AUTH)
        hit = httpx.post(proxy.v1 + "/chat/completions", content=chat("h"), headers=AUTH)
    for response in (first, hit):
        assert "X-Evil" not in response.headers
    if first.status_code == 200:  # the parser may also refuse the whole answer
        assert first.headers["X-Good"] == "yes"
        assert hit.headers["X-Repro-Cache"] == "HIT"
    else:
        assert first.status_code == 502


def _gzip_bomb(inflated_mib: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 20)
    return b"".join(packer.compress(block) for _ in range(inflated_mib)) + packer.flush()


def test_a_gzip_bomb_answer_is_a_502_within_tens_of_mib_and_stores_nothing(
    start_proxy: ProxyFactory,
) -> None:
    bomb = _gzip_bomb(300)
    assert len(bomb) < 400 * 1024
    answer = http_answer(bomb, "Content-Type: application/json", "Content-Encoding: gzip")
    with Scripted(fixed(answer)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        httpx.get(proxy.url + "/metrics", timeout=5)
        before = peak_rss_kib(proxy.proc.pid)
        first = httpx.post(proxy.v1 + "/chat/completions", content=chat("x"), headers=AUTH)
        second = httpx.post(proxy.v1 + "/chat/completions", content=chat("x"), headers=AUTH)
        rise_mib = (peak_rss_kib(proxy.proc.pid) - before) / 1024
    assert (first.status_code, first.json()["error"]["code"]) == (502, UpstreamTooLarge.code)
    assert second.status_code == 502  # nothing was stored to answer it
    assert len(upstream.received) == 2
    assert rise_mib < 80, f"peak RSS rose {rise_mib:.0f} MiB"


def test_a_whole_answer_is_bounded_by_the_upstream_timeout_however_slowly_it_drips(
    start_proxy: ProxyFactory,
) -> None:
    dripped = threading.Event()
    with Scripted(dripping_json(100, 0.2, dripped)) as upstream:
        proxy = start_proxy("--upstream-timeout", "1", upstream=upstream.v1)
        answer = httpx.post(
            proxy.v1 + "/chat/completions", content=chat("d"), headers=AUTH, timeout=30
        )
        assert not dripped.is_set()  # answered while the upstream was still dripping
    assert (answer.status_code, answer.json()["error"]["code"]) == (504, "upstream_timeout")


def test_an_error_body_with_status_200_is_neither_stored_nor_taken_as_a_fingerprint(
    start_proxy: ProxyFactory,
) -> None:
    error = orjson.dumps(
        {"error": {"message": "quota", "type": "x", "code": "y"}, "system_fingerprint": "fp_err"}
    )
    with Scripted(fixed(http_answer(error, "Content-Type: application/json"))) as upstream:
        proxy = start_proxy("--admin-token", "t0ken", upstream=upstream.v1)
        answers = [
            httpx.post(proxy.v1 + "/chat/completions", content=chat("e"), headers=AUTH)
            for _ in range(2)
        ]
        fingerprints = httpx.get(
            proxy.url + "/admin/fingerprints", headers={"Authorization": "Bearer t0ken"}
        ).json()
    assert [a.headers["X-Repro-Cache"] for a in answers] == ["MISS", "MISS"]
    assert all(a.json()["error"]["message"] == "quota" for a in answers)
    assert "X-Repro-Fingerprint" not in answers[0].headers
    assert fingerprints == {}
    assert len(upstream.received) == 2


@pytest.mark.parametrize(
    "fingerprint",
    ["fp_x\r\nX-Injected: yes", "fp " + "a" * 300, "fp_\u00e9t\u00e9", 12345, "fp_\x00"],
    ids=["line-break", "long", "non-ascii", "not-a-string", "nul"],
)
def test_a_system_fingerprint_that_is_not_a_short_token_is_read_as_none(
    start_proxy: ProxyFactory, fingerprint: object
) -> None:
    answer = http_answer(completion("ok", fingerprint), "Content-Type: application/json")
    with Scripted(fixed(answer)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        first = httpx.post(proxy.v1 + "/chat/completions", content=chat("f"), headers=AUTH)
        hit = httpx.post(proxy.v1 + "/chat/completions", content=chat("f"), headers=AUTH)
        metrics = proxy.metrics()
    assert first.headers["X-Repro-Fingerprint"] == "none"
    assert "X-Injected" not in first.headers
    assert (hit.headers["X-Repro-Cache"], hit.headers["X-Repro-Fingerprint"]) == ("HIT", "none")
    assert "X-Injected" not in metrics and "aaaa" not in metrics


def test_an_error_dressed_as_a_200_does_not_make_a_made_up_key_trusted(
    start_proxy: ProxyFactory,
) -> None:
    async def gateway(writer: asyncio.StreamWriter, request: Received) -> None:
        real = request.headers.get("authorization") == "Bearer sk-real"
        if request.request_line.startswith("GET /v1/models"):
            answer = http_answer(b'{"data": []}') if real else http_answer(b"{}", status="401 No")
        elif real:
            answer = http_answer(completion("the real tenant's answer"))
        else:
            answer = http_answer(orjson.dumps({"error": {"message": "bad key"}}))
        writer.write(answer)
        await writer.drain()

    fake = {**AUTH, "Authorization": "Bearer sk-made-up"}
    with Scripted(gateway) as upstream:
        # pin: the error (no fingerprint) must not hide the HIT by rotating the current one
        proxy = start_proxy(
            "--cache-scope", "shared", "--fingerprint-policy", "pin", upstream=upstream.v1
        )
        url = proxy.v1 + "/chat/completions"
        stored = httpx.post(
            url, content=chat("q"), headers={**AUTH, "Authorization": "Bearer sk-real"}
        )
        httpx.post(url, content=chat("another question"), headers=fake)
        probe = httpx.post(url, content=chat("q"), headers=fake)
    assert stored.json()["choices"][0]["message"]["content"] == "the real tenant's answer"
    assert probe.headers["X-Repro-Cache"] != "HIT"
    assert b"real tenant" not in probe.content


@pytest.mark.parametrize("scope", ["shared", "key"])
def test_a_key_check_answered_by_an_error_dressed_as_a_200_vouches_for_nothing(
    start_proxy: ProxyFactory, scope: str
) -> None:
    """A gateway that answers a bad key with a 200 and an error body everywhere, its model
    list included: the key check took any 2xx for acceptance, so in `shared` scope a made-up
    key was found accepted (its model list, a stranger's, and a stranger's very request all
    "served"), and in `key` scope a revoked one read its own stored answers again."""
    revoked = threading.Event()

    async def gateway(writer: asyncio.StreamWriter, request: Received) -> None:
        key = request.headers.get("authorization")
        if key == "Bearer sk-real" and not revoked.is_set():
            if request.request_line.startswith("GET /v1/models"):
                answer = http_answer(b'{"object": "list", "data": []}')
            else:
                answer = http_answer(completion("the real tenant's answer"))
        else:
            answer = http_answer(orjson.dumps({"error": {"message": "bad key"}}))
        writer.write(answer)
        await writer.drain()

    real = {**AUTH, "Authorization": "Bearer sk-real"}
    reader = real if scope == "key" else {**AUTH, "Authorization": "Bearer sk-made-up"}
    with Scripted(gateway) as upstream:
        proxy = start_proxy(
            "--cache-scope",
            scope,
            "--fingerprint-policy",
            "pin",
            "--key-check-interval",
            "1",
            upstream=upstream.v1,
        )
        url = proxy.v1 + "/chat/completions"
        stored = httpx.post(url, content=chat("q"), headers=real)
        revoked.set()
        time.sleep(1.5)  # the acceptance the stored answer earned has expired
        probe = httpx.post(url, content=chat("q"), headers=reader)
    assert stored.json()["choices"][0]["message"]["content"] == "the real tenant's answer"
    assert probe.headers["X-Repro-Cache"] != "HIT"
    assert b"real tenant" not in probe.content


def test_an_error_streamed_with_a_200_does_not_make_a_made_up_key_trusted(
    start_proxy: ProxyFactory,
) -> None:
    """A gateway that opens every stream with a 200 and reports a bad key as an error event:
    that stream answered nobody, so it vouches for no key, or a made-up one would read the
    shared cache after asking for any stream."""
    sse_head = "Content-Type: text/event-stream"
    error_event = b'data: {"error": {"message": "bad key", "type": "invalid_request_error"}}\n\n'

    async def gateway(writer: asyncio.StreamWriter, request: Received) -> None:
        real = request.headers.get("authorization") == "Bearer sk-real"
        if request.request_line.startswith("GET /v1/models"):
            answer = http_answer(b'{"data": []}') if real else http_answer(b"{}", status="401 No")
        elif real:
            answer = http_answer(completion("the real tenant's answer"))
        elif b'"stream":true' in request.body:
            answer = http_answer(error_event + b"data: [DONE]\n\n", sse_head)
        else:
            answer = http_answer(orjson.dumps({"error": {"message": "bad key"}}), status="401 No")
        writer.write(answer)
        await writer.drain()

    fake = {**AUTH, "Authorization": "Bearer sk-made-up"}
    streamed = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "s"}], "stream": True}
    )
    with Scripted(gateway) as upstream:
        proxy = start_proxy(
            "--cache-scope", "shared", "--fingerprint-policy", "pin", upstream=upstream.v1
        )
        url = proxy.v1 + "/chat/completions"
        real = {**AUTH, "Authorization": "Bearer sk-real"}
        stored = httpx.post(url, content=chat("q"), headers=real)
        refused = httpx.post(url, content=chat("q"), headers=fake)
        error = httpx.post(url, content=streamed, headers=fake)
        probe = httpx.post(url, content=chat("q"), headers=fake)
    assert stored.json()["choices"][0]["message"]["content"] == "the real tenant's answer"
    assert refused.status_code == 401
    assert (error.status_code, error.content) == (200, error_event + b"data: [DONE]\n\n")
    assert probe.headers["X-Repro-Cache"] != "HIT"
    assert b"real tenant" not in probe.content


def test_a_pass_through_body_that_goes_silent_is_a_408_and_reaches_nothing_whole(
    start_proxy: ProxyFactory,
) -> None:
    with Scripted(echo_digest) as upstream:
        proxy = start_proxy("--body-timeout", "1", upstream=upstream.v1)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/files HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer sk-a\r\n"
                b"Content-Length: 100\r\n\r\n0123456789"
            )
            # Answered within the socket's 10 s, far below the default --body-timeout of 60:
            # the 408 is the configured second's.
            answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert b"request_timeout" in answer
    assert upstream.received == []  # the upstream never got a whole request


async def sets_a_cookie(writer: asyncio.StreamWriter, request: Received) -> None:
    """Answers every request and hands its caller a session cookie naming the caller's key,
    as gateways with sticky sessions or bot checks do."""
    key = request.headers.get("authorization", "").removeprefix("Bearer ")
    cookies = [
        f"Set-Cookie: session={key}; Path=/",
        f"Set-Cookie: sticky={key}; Domain=localhost; Path=/v1; Max-Age=3600",
    ]
    body = completion(digest_of(request.body))
    writer.write(http_answer(body, "Content-Type: application/json", *cookies))
    await writer.drain()


@pytest.mark.parametrize("route", ["/chat/completions", "/files"])
def test_a_cookie_the_upstream_sets_for_one_tenant_never_goes_with_anothers_request(
    start_proxy: ProxyFactory, route: str
) -> None:
    """The upstream client keeps no cookies: one held for every request would carry the first
    tenant's session to every later one, on cached and pass-through routes alike. The cookie
    still reaches the client it was set for, whose own Cookie header is its own business."""
    with Scripted(sets_a_cookie) as upstream:
        # By name: aiohttp's cookie jar would take no cookie from an IP address anyway.
        proxy = start_proxy(upstream=upstream.v1.replace("127.0.0.1", "localhost"))
        first = httpx.post(proxy.v1 + route, content=chat("one"), headers=AUTH, timeout=10)
        other = {**AUTH, "Authorization": "Bearer sk-other-tenant"}
        httpx.post(proxy.v1 + route, content=chat("two"), headers=other, timeout=10)
        own = {**other, "Cookie": "mine=1"}
        httpx.post(proxy.v1 + route, content=chat("three"), headers=own, timeout=10)
    assert "session=sk-victim" in first.headers.get_list("set-cookie")[0]
    sent = [r.headers.get("cookie") for r in upstream.received]
    assert sent == [None, None, "mine=1"]


async def test_every_request_whose_answer_is_read_asks_only_for_codings_the_proxy_inflates() -> (
    None
):
    """aiohttp's default Accept-Encoding adds br with Brotli installed and zstd on Python 3.14:
    a side request (key check, drift check, probe) would get an answer in a coding the proxy
    reads as its bytes, and a hostile or plain upstream's br answer would read as no answer.
    A pass-through keeps the client's own, or none."""
    with Scripted(fixed(http_answer(b"{}", "Content-Type: application/json"))) as scripted:
        upstream = Upstream(scripted.v1, 5, 5)
        try:
            await upstream.fetch("GET", "/v1/models", {}, b"")
            await upstream.fetch("POST", "/v1/x", {"Accept-Encoding": "gzip"}, b"{}")
            raw = await upstream.send("POST", "/v1/files", {}, b"{}", decode=False)
            raw.release()
        finally:
            await upstream.close()
    codings = [r.headers.get("accept-encoding") for r in scripted.received]
    assert codings == ["gzip, deflate", "gzip", None]
