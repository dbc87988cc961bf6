"""Parser differentials on the cached routes, against a real proxy process and an upstream
written for the attack (tests/hostile.py): whatever the key covers must be exactly what the
upstream reads, or the request is refused with a 400 in OpenAI's shape; and what the upstream
answers is stored only as it was sent."""

from __future__ import annotations

import asyncio
import gzip

import httpx
import orjson
import pytest
import zstandard

from tests.fixtures_procs import ProxyFactory, raw_exchange
from tests.hostile import CHAT, STREAM, Received, Scripted, completion, http_answer, sse_frames

AUTH = {"Authorization": "Bearer sk-victim", "Content-Type": "application/json"}


async def answers_its_request_line(writer: asyncio.StreamWriter, request: Received) -> None:
    writer.write(http_answer(completion(request.request_line), "Content-Type: application/json"))
    await writer.drain()


def post_target(proxy_url: str, target: str, body: bytes = CHAT) -> httpx.Response:
    """POST with this exact request target, as a client wrote it (httpx would respell it)."""
    with httpx.Client(timeout=10) as client:
        request = client.build_request(
            "POST", proxy_url + "/v1/chat/completions", content=body, headers=AUTH
        )
        request.extensions["target"] = target.encode()
        return client.send(request)


QUERIES = [
    "tag=a%20b",  # a space, escaped: sent decoded, it splits the request line
    "tag=a+b",
    "note=100%25",  # a lone `%` upstream
    "note=%2525",  # decoded once too often
    "ref=%23top",  # a `#` upstream starts a fragment: the rest of the query is lost
    "name=caf%C3%A9",  # raw UTF-8 in the request line
    "x=%20HTTP/1.1%0D%0AHost:%20evil%0D%0A%0D%0AGET%20/v1/models",  # request splitting
]


@pytest.mark.parametrize("query", QUERIES)
def test_a_cached_routes_query_reaches_the_upstream_exactly_as_the_client_sent_it(
    start_proxy: ProxyFactory, query: str
) -> None:
    """The key names the query as the client wrote it, and the upstream must receive those very
    bytes: a query decoded on the way sends a request line with spaces, raw bytes or a `#` in
    it (one the upstream splits or cuts elsewhere than the client meant) and changes what each
    parameter says (`%2525` arrives as `%25`)."""
    with Scripted(answers_its_request_line) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        first = post_target(proxy.url, "/v1/chat/completions?" + query)
        again = post_target(proxy.url, "/v1/chat/completions?" + query)
    expected = f"POST /v1/chat/completions?{query} HTTP/1.1"
    assert [r.request_line for r in upstream.received] == [expected]
    assert first.json()["choices"][0]["message"]["content"] == expected
    assert again.headers["x-repro-cache"] == "HIT"


def chat_with(**fields: object) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields})


ODD_FLAGS = [
    ("/v1/chat/completions", chat_with(stream=1), "stream", "an integer"),
    ("/v1/chat/completions", chat_with(stream="true"), "stream", "a string"),
    (
        "/v1/completions",
        orjson.dumps({"model": "m", "prompt": "hi", "stream": [True]}),
        "stream",
        "an array",
    ),
    (
        "/v1/responses",
        orjson.dumps({"model": "m", "input": "hi", "background": 1}),
        "background",
        "an integer",
    ),
    (
        "/v1/responses",
        orjson.dumps({"model": "m", "input": "hi", "stream": 1.5}),
        "stream",
        "a decimal number",
    ),
]


@pytest.mark.parametrize(
    ("route", "body", "param", "got"), ODD_FLAGS, ids=[f"{p}-{g}" for _, _, p, g in ODD_FLAGS]
)
def test_a_flag_the_proxy_acts_on_must_be_a_boolean(
    start_proxy: ProxyFactory, route: str, body: bytes, param: str, got: str
) -> None:
    """The proxy reads `"stream": 1` as no stream, and `"background": 1` as no job; an upstream
    that coerces (pydantic's lax mode does) streams, or queues a job, and the proxy would store
    that as one whole answer for every later caller. OpenAI itself refuses them; so does the
    proxy, in OpenAI's words, before the upstream is asked."""
    with Scripted(answers_its_request_line) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        response = httpx.post(proxy.url + route, content=body, headers=AUTH, timeout=10)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "invalid_type",
        param,
        "invalid_request_error",
    )
    assert (
        error["message"]
        == f"Invalid type for '{param}': expected a boolean, but got {got} instead."
    )
    assert upstream.received == []


@pytest.mark.parametrize(
    ("credential", "connection"),
    [
        ("Authorization: Bearer sk-revoked", "keep-alive, Authorization"),
        ("api-key: sk-revoked", "API-Key"),
        ("x-api-key: sk-revoked", "close, x-api-key"),
        ("X-Gateway-Key: sk-revoked", "x-gateway-key"),
    ],
)
def test_a_credential_the_client_names_as_hop_by_hop_is_refused_not_stripped(
    start_proxy: ProxyFactory, credential: str, connection: str
) -> None:
    """A proxy removes the headers its client's Connection header names. The tenant is made
    of the credential; stripped, the upstream would answer without it (an optional-auth
    gateway serves that as anonymous), and its 2xx would vouch for a revoked or made-up key
    as if the upstream had accepted it: that key would then read its partition's answers.
    Such a request is refused in OpenAI's shape, and the upstream never receives it."""
    name, _, value = credential.partition(": ")
    headers = {"Content-Type": "application/json", name: value, "Connection": connection}
    with Scripted(answers_its_request_line) as upstream:
        proxy = start_proxy("--credential-header", "X-Gateway-Key", upstream=upstream.v1)
        response = httpx.post(
            proxy.v1 + "/chat/completions", content=CHAT, headers=headers, timeout=10
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_header", "Connection")
    assert upstream.received == []


def coded(coding: str, body: bytes) -> bytes:
    return http_answer(body, "Content-Type: application/json", f"Content-Encoding: {coding}")


UNREAD_CODINGS = [
    ("x-gzip", coded("x-gzip", gzip.compress(completion("zipped")))),
    ("gzip-twice", coded("gzip, gzip", gzip.compress(gzip.compress(completion("zipped"))))),
    ("unknown", coded("x-custom", completion("plain under another name"))),
    ("br", coded("br", b"\x1b brotli bytes the proxy never asked for")),
    ("zstd", coded("zstd", zstandard.ZstdCompressor().compress(completion("zstd")))),
]


@pytest.mark.parametrize(
    "answer", [a for _, a in UNREAD_CODINGS], ids=[name for name, _ in UNREAD_CODINGS]
)
def test_an_answer_in_a_coding_the_proxy_did_not_decode_keeps_its_coding_and_is_not_stored(
    start_proxy: ProxyFactory, answer: bytes
) -> None:
    """The proxy asks for answers it decodes (gzip, deflate) and drops their Content-Encoding;
    an answer in another coding (`x-gzip`, two codings, a name of its own, or br and zstd,
    which it does not ask for) is not decoded. With
    its Content-Encoding dropped, the client read compressed bytes as plain JSON, and one that
    happened to parse was stored and served as what the upstream never said it was."""

    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(answer)
        await writer.drain()

    coding = answer.split(b"Content-Encoding: ")[1].split(b"\r\n")[0].decode()
    with Scripted(write) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        with httpx.Client(timeout=10) as client:  # raw bytes: httpx would decode gzip itself
            answers = []
            for _ in range(2):
                with client.stream(
                    "POST", proxy.v1 + "/chat/completions", content=CHAT, headers=AUTH
                ) as response:
                    answers.append((response, b"".join(response.iter_raw())))
    assert [r.headers.get("content-encoding") for r, _ in answers] == [coding, coding]
    assert [r.headers["x-repro-cache"] for r, _ in answers] == ["MISS", "MISS"]
    assert answers[0][1] == answer.partition(b"\r\n\r\n")[2]
    assert len(upstream.received) == 2


def test_an_answer_naming_its_coding_twice_is_a_502(start_proxy: ProxyFactory) -> None:
    """Two Content-Encoding lines: aiohttp decodes the first one only, so neither the coding
    passed on nor the one dropped would describe the bytes."""
    twice = http_answer(
        gzip.compress(gzip.compress(completion("zipped"))),
        "Content-Type: application/json",
        "Content-Encoding: gzip",
        "Content-Encoding: gzip",
    )

    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(twice)
        await writer.drain()

    with Scripted(write) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        response = httpx.post(proxy.v1 + "/chat/completions", content=CHAT, headers=AUTH)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
    assert "Content-Encoding" in response.json()["error"]["message"]


def answering(*extra: str) -> Scripted:
    """An upstream answering a stream or a whole completion, with `extra` headers."""

    async def write(writer: asyncio.StreamWriter, request: Received) -> None:
        if b'"stream":true' in request.body:
            body, first = sse_frames("streamed"), "text/event-stream"
        else:
            body, first = completion("whole"), "application/json"
        writer.write(http_answer(body, f"Content-Type: {first}", *extra))
        await writer.drain()

    return Scripted(write)


@pytest.mark.parametrize("body", [CHAT, STREAM], ids=["whole", "stream"])
def test_a_cookie_the_upstream_sets_is_never_stored_nor_replayed(
    start_proxy: ProxyFactory, body: bytes
) -> None:
    """A HIT carries the stored answer and the proxy's own headers only: a Set-Cookie the
    upstream sent with the answer (a gateway's session) went to its own caller alone."""
    with answering("Set-Cookie: session=sk-victim-session; Path=/") as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        miss, hit = (
            httpx.post(proxy.v1 + "/chat/completions", content=body, headers=AUTH, timeout=10)
            for _ in range(2)
        )
    assert miss.headers.get_list("set-cookie") == ["session=sk-victim-session; Path=/"]
    assert hit.headers["x-repro-cache"] == "HIT"
    assert "set-cookie" not in hit.headers
    assert hit.content == miss.content


@pytest.mark.parametrize("body", [CHAT, STREAM], ids=["whole", "stream"])
def test_an_answer_with_two_content_types_is_passed_on_but_not_stored(
    start_proxy: ProxyFactory, body: bytes
) -> None:
    """Two Content-Type lines: the client of the MISS gets both (and reads one of its choice),
    while a stored answer keeps one; a HIT would label the bytes otherwise than the answer
    they were (`text/html`, say). Such an answer is not stored."""
    with answering("Content-Type: text/html") as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        answers = [
            httpx.post(proxy.v1 + "/chat/completions", content=body, headers=AUTH, timeout=10)
            for _ in range(2)
        ]
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.headers["x-repro-cache"] for a in answers] == ["MISS", "MISS"]
    assert all("text/html" in a.headers["content-type"] for a in answers)
    assert len(upstream.received) == 2


SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    + completion("after the switch")
)


@pytest.mark.parametrize(
    ("route", "body", "answer"),
    [
        ("/chat/completions", CHAT, SWITCHING),
        ("/chat/completions", STREAM, SWITCHING),
        ("/files", CHAT, SWITCHING),
        ("/chat/completions", CHAT, http_answer(completion("odd"), status="999 Odd")),
        ("/models", b"", http_answer(completion("odd"), status="600 Odd")),
    ],
    ids=["101-whole", "101-stream", "101-pass-through", "999", "600-pass-through"],
)
def test_a_status_that_is_no_final_answer_is_a_502(
    start_proxy: ProxyFactory, route: str, body: bytes, answer: bytes
) -> None:
    """The proxy never asks for an upgrade (it drops the client's Upgrade), so a 101 is no
    answer to its request; passed on, it told the client (or a reverse proxy pooling its
    connections to this one) that the connection switched protocols, and the bytes after it
    were read as the new protocol's. A status beyond 599 is no HTTP status at all."""

    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(answer)
        await writer.drain()

    with Scripted(write) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        response = httpx.post(proxy.v1 + route, content=body, headers=AUTH, timeout=10)
        after = httpx.get(proxy.url + "/healthz", timeout=10)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
    assert after.status_code == 200


def test_pipelined_requests_are_answered_in_order_a_hit_never_overtaking_a_miss(
    start_proxy: ProxyFactory,
) -> None:
    """Three requests written at once on one connection: a slow MISS, a HIT, a MISS. Answered
    out of order, the second caller's answer would be read as the first's."""

    async def slow_first(writer: asyncio.StreamWriter, request: Received) -> None:
        if b"slow" in request.body:
            await asyncio.sleep(0.5)  # the HIT behind it is ready long before
        writer.write(
            http_answer(completion(request.body.decode()), "Content-Type: application/json")
        )
        await writer.drain()

    with Scripted(slow_first) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        assert post_target(proxy.url, "/v1/chat/completions", ask_body("hi")).status_code == 200
        received = asyncio.run(pipelined(proxy.port, [ask("slow"), ask("hi"), ask("last")]))
    caches = [r.split(b"X-Repro-Cache: ")[1].split(b"\r\n")[0] for r in received]
    assert caches == [b"MISS", b"HIT", b"MISS"]
    assert b"slow" in received[0] and b"last" in received[2]


def ask_body(content: str) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": content}]})


def ask(content: str) -> bytes:
    """A whole request, as written on a connection."""
    body = ask_body(content)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: Bearer sk-victim\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def pipelined(port: int, requests: list[bytes]) -> list[bytes]:
    """Write the requests at once, and read as many answers (each framed by its length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(requests))
        await writer.drain()
        answers = []
        async with asyncio.timeout(10):
            for _ in requests:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                answers.append(head + await reader.readexactly(length))
        return answers
    finally:
        writer.close()


def test_two_authorization_lines_that_disagree_are_refused(start_proxy: ProxyFactory) -> None:
    """Which line an upstream reads (the first or the last) is not the proxy's to know, and the
    tenant made of both lines is order-blind: `victim, attacker` and `attacker, victim` would
    share a partition the upstream answers as two tenants. Refused before the upstream (more
    cases in test_e2e_duplicate_headers)."""
    with Scripted(answers_its_request_line) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        both = httpx.post(
            proxy.v1 + "/chat/completions",
            content=CHAT,
            headers=[*AUTH.items(), ("Authorization", "Bearer sk-attacker")],
        )
    assert both.status_code == 400
    assert both.json()["error"]["code"] == "invalid_header"
    assert upstream.received == []


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/files"])
def test_a_request_in_a_transfer_coding_besides_chunked_is_refused(
    start_proxy: ProxyFactory, path: str
) -> None:
    """`Transfer-Encoding: gzip, chunked`: the HTTP server takes the chunks off and hands the
    gzip coding's bytes over as the body, undecoded; a reader that decodes it (a proxy in
    front) and this one then read two bodies. The coding is refused, whatever the route."""
    body = CHAT
    request = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer sk-victim\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    ).encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with Scripted(answers_its_request_line) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        (answer,) = asyncio.run(pipelined(proxy.port, [request]))
    assert answer.startswith(b"HTTP/1.1 400 ")
    error = orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "invalid_body"
    assert upstream.received == []


def framed(*lines: str, body: bytes = CHAT) -> bytes:
    head = ["POST /v1/chat/completions HTTP/1.1", "Host: localhost", "Authorization: Bearer sk-v"]
    return ("\r\n".join([*head, *lines, "", ""])).encode() + body


AMBIGUOUS_FRAMING = {
    "two-equal-lengths": framed(f"Content-Length: {len(CHAT)}", f"Content-Length: {len(CHAT)}"),
    "length-list": framed(f"Content-Length: {len(CHAT)}, {len(CHAT)}"),
    "chunked-twice": framed(
        "Transfer-Encoding: chunked, chunked", body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT), CHAT)
    ),
    "obs-fold": framed("X-Note: a", " folded", f"Content-Length: {len(CHAT)}"),
    "two-content-types": framed(
        "Content-Type: text/plain", "Content-Type: application/json", f"Content-Length: {len(CHAT)}"
    ),
    "two-hosts": framed("Host: other", f"Content-Length: {len(CHAT)}"),
    "bare-lf-chunks": framed(
        "Transfer-Encoding: chunked", body=b"%x\n%s\n0\n\n" % (len(CHAT), CHAT)
    ),
}


@pytest.mark.parametrize("request_bytes", AMBIGUOUS_FRAMING.values(), ids=AMBIGUOUS_FRAMING)
def test_a_request_other_readers_could_frame_otherwise_is_refused_whole(
    start_proxy: ProxyFactory, request_bytes: bytes
) -> None:
    """Each of these is read one way by some servers and another by others (which length,
    which header, where a chunk ends): a proxy in front of this one may have read another
    request than the one it would forward. Refused as malformed, and nothing goes upstream."""
    with Scripted(answers_its_request_line) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        (answer,) = asyncio.run(pipelined(proxy.port, [request_bytes]))
    assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request")
    assert orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "invalid_http"
    assert upstream.received == []


def test_an_informational_answer_before_the_answer_is_read_past_and_leaves_nothing(
    start_proxy: ProxyFactory,
) -> None:
    """A 103 Early Hints (with a cookie of its own) before the 200: the answer is the 200,
    stored and served as such, and nothing of the 103 reaches the client or the store."""
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\nSet-Cookie: early=1\r\n\r\n"

    async def hinted(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(
            hints + http_answer(completion("after hints"), "Content-Type: application/json")
        )
        await writer.drain()

    with Scripted(hinted) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        miss, hit = (
            httpx.post(proxy.v1 + "/chat/completions", content=CHAT, headers=AUTH, timeout=10)
            for _ in range(2)
        )
    assert [miss.status_code, hit.status_code] == [200, 200]
    assert [miss.headers["x-repro-cache"], hit.headers["x-repro-cache"]] == ["MISS", "HIT"]
    assert hit.json()["choices"][0]["message"]["content"] == "after hints"
    assert "set-cookie" not in miss.headers and "link" not in hit.headers


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_a_bodiless_status_with_a_body_never_answers_the_next_request(
    start_proxy: ProxyFactory, status: str
) -> None:
    """A 204 or 304 has no body by definition; an upstream that sends one anyway (here, a
    whole answer of its own choosing) must not leave it on a pooled connection, where it would
    be read as the answer to the next request, another tenant's, and stored under its key."""
    poison = http_answer(completion("poisoned"), "Content-Type: application/json")

    async def smuggles(writer: asyncio.StreamWriter, request: Received) -> None:
        if b"attacker" in request.body:
            writer.write(f"HTTP/1.1 {status}\r\n\r\n".encode() + poison)
        else:
            writer.write(http_answer(completion("honest"), "Content-Type: application/json"))
        await writer.drain()

    with Scripted(smuggles) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        first = httpx.post(
            proxy.v1 + "/chat/completions", content=chat_with(note="attacker"), headers=AUTH
        )
        other = {**AUTH, "Authorization": "Bearer sk-other"}
        victim = httpx.post(proxy.v1 + "/chat/completions", content=CHAT, headers=other)
    assert (first.status_code, first.content) == (int(status[:3]), b"")
    assert victim.json()["choices"][0]["message"]["content"] == "honest"
    assert len(upstream.received) == 2


def test_a_pass_through_request_carries_no_header_its_client_did_not_send(
    start_proxy: ProxyFactory,
) -> None:
    """The HTTP client labels a body without a Content-Type `application/octet-stream` and
    adds `Accept: */*`: the upstream would read a type the client never claimed (and not sniff
    it as it would otherwise). A pass-through goes with the client's headers only (and the
    framing of the bytes sent)."""
    request = (
        b"POST /v1/files HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer sk-v\r\n"
        b"User-Agent: client\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
    )
    with Scripted(answers_its_request_line) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        answer = raw_exchange(proxy.port, request)
    assert answer.startswith(b"HTTP/1.1 200 ")
    (received,) = upstream.received
    names = sorted(line.split(b":")[0].lower() for line in received.head.split(b"\r\n")[1:])
    assert names == [b"authorization", b"content-length", b"host", b"user-agent"]


@pytest.mark.parametrize("name", ["api_key", "X_API_KEY", "x_gateway_key"])
def test_a_credential_header_spelled_with_underscores_makes_a_tenant_of_its_own(
    start_proxy: ProxyFactory, name: str
) -> None:
    """A server behind a CGI-style gateway (WSGI among them) reads `api_key` as `api-key`, and
    answers it as the key's owner: read as no credential, its caller would share the keyless
    partition, that answer served to every keyless caller. Its name says it holds a credential,
    so it makes a partition of its own, both ways, and reaches the upstream as sent."""
    keyless = {"Content-Type": "application/json"}
    keyed = {**keyless, name: "sk-someone"}
    with Scripted(answers_its_request_line) as upstream:
        proxy = start_proxy("--credential-header", "x-gateway-key", upstream=upstream.v1)
        url = proxy.v1 + "/chat/completions"
        first = httpx.post(url, content=CHAT, headers=keyless, timeout=10)
        asked = httpx.post(url, content=CHAT, headers=keyed, timeout=10)
        again = httpx.post(url, content=CHAT, headers=keyless, timeout=10)
    assert [r.headers["X-Repro-Cache"] for r in (first, asked, again)] == ["MISS", "MISS", "HIT"]
    assert len(upstream.received) == 2
    assert f"{name.lower()}: sk-someone".encode() in upstream.received[1].head.lower()
