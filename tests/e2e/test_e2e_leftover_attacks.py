"""Leftover attacks of a hostile client or upstream, each against real processes: the sim or a
scripted hostile upstream, real Redis where proxies share a store.

- A stored answer served another way than a HIT (a Responses fetch by id, `only-if-cached`)
  passes the same key check as a HIT: a revoked key reads nothing.
- A key check reads a bounded part of the upstream's answer, and only so many distinct checks
  are in flight: made-up keys cannot make the proxy buffer 32 MiB each, or open upstream calls
  without bound.
- An upstream's `Set-Cookie` reaches only the client it answered.
- An answer whose items lack what their client reads (a chat message, a completion's text, an
  embedding) is relayed but never stored.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import httpx
import orjson
import pytest

from tests.fixtures_procs import Proxy, ProxyFactory, Sim
from tests.hostile import (
    Received,
    Scripted,
    Writer,
    completion,
    fixed,
    http_answer,
    json_never_stored,
    relayed_never_stored,
    sse_frames,
)

RESPONSE = {"model": "gpt-4o-mini", "input": "Name three rivers."}


def fetch_by_id(proxy: Proxy, response_id: str, key: str, ns: str) -> httpx.Response:
    headers = {
        "Authorization": f"Bearer {key}",
        "X-Repro-Namespace": ns,
        "Cache-Control": "only-if-cached",
    }
    return httpx.get(f"{proxy.v1}/responses/{response_id}", headers=headers, timeout=10)


def create(proxy: Proxy, key: str, ns: str) -> str:
    headers = {"Authorization": f"Bearer {key}", "X-Repro-Namespace": ns}
    made = httpx.post(proxy.v1 + "/responses", json=RESPONSE, headers=headers, timeout=10)
    assert made.status_code == 200, made.text
    return str(made.json()["id"])


@pytest.mark.parametrize("scope", ["key", "shared"])
def test_a_revoked_key_fetches_no_stored_response_by_id(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, ns: str, scope: str
) -> None:
    """`GET /v1/responses/{id}` with `only-if-cached` outside replay mode serves the stored
    response: it must pass the key check a HIT of the request that made it passes. A second
    proxy on the same store has no verdict on the key yet, as any proxy once the key-check
    interval has passed: it asks the upstream, which refuses the revoked key."""
    store = ("--store", redis_url, "--secret", "s3cret-of-16-bytes", "--cache-scope", scope)
    recorder, reader = start_proxy(*store), start_proxy(*store)
    sim.accept_keys("sk-alice", "sk-carol")
    revoked = create(recorder, "sk-alice", ns)
    kept = create(recorder, "sk-carol", ns + "-carol")
    sim.accept_keys("sk-carol")  # alice's key is revoked
    served = fetch_by_id(reader, kept, "sk-carol", ns + "-carol")
    assert served.status_code == 200, served.text  # a key still accepted reads by id
    assert served.headers["X-Repro-Cache"] == "HIT"
    # as every answer holding the upstream's bytes, on the origin of the operators' page
    assert served.headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    refused = fetch_by_id(reader, revoked, "sk-alice", ns)
    assert refused.status_code == 504, refused.text
    assert refused.json()["error"]["code"] == "cache_miss"
    assert "output" not in refused.json()
    asked = [r["path"] for r in sim.requests() if r["method"] == "GET"]
    assert "/v1/models" in asked  # the reader asked about alice's key
    assert f"/v1/responses/{revoked}" not in asked  # and never sent the fetch itself upstream


def huge_model_list(cut: threading.Event) -> Writer:
    """Answer `GET /v1/models` with a 200 declaring 32 MiB (the bound a side request was read
    to), sending 256 KiB of it and then a byte at a time for as long as the proxy reads on
    (at most 20 s): `cut` is set once the proxy closed the connection. Anything else is
    answered with a chat completion."""

    async def write(writer: asyncio.StreamWriter, received: Received) -> None:
        if not received.request_line.startswith("GET /v1/models"):
            writer.write(http_answer(completion("hi"), "Content-Type: application/json"))
            await writer.drain()
            return
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        writer.write(f"{head}Content-Length: {32 * 1024 * 1024}\r\n\r\n".encode())
        writer.write(b'{"object": "list", "data": [' + b" " * (256 * 1024))
        try:
            for _ in range(400):
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(b" ")
        except ConnectionError:
            cut.set()

    return write


def test_a_key_check_reads_no_more_of_the_upstreams_answer_than_it_needs(
    start_proxy: ProxyFactory,
) -> None:
    """A key check needs a status and a short answer; it read up to 32 MiB of `/v1/models`
    (each made-up key one more such read), and waited for all of it within
    --key-check-timeout. Now it stops past 64 KiB and closes that connection; a 2xx model list
    that long is a list (an error dressed as a 200 is short), and the request goes on."""
    cut = threading.Event()
    with Scripted(huge_model_list(cut)) as upstream:
        proxy = start_proxy(
            "--cache-scope", "shared", "--key-check-timeout", "30", upstream=upstream.v1
        )
        started = time.monotonic()
        answered = proxy.chat("long list", key="sk-" + uuid.uuid4().hex, timeout=10)
        assert answered.status_code == 200, answered.text
        assert time.monotonic() - started < 8
        assert cut.wait(10)  # the proxy closed the connection instead of reading on
    assert any(r.request_line.startswith("GET /v1/models") for r in upstream.received)


COOKIES = ("Set-Cookie: session=victim-session; Path=/", 'Clear-Site-Data: "storage"')


async def cookie_setter(writer: asyncio.StreamWriter, received: Received) -> None:
    """Every answer sets a session cookie of its own, and would clear the storage of the origin
    it is relayed on. The model list refuses made-up keys
    (the proxy's `sk-repro-…`) and lists models to others, so that in `shared` scope another
    key reads the stored answers."""
    if received.request_line.startswith("GET /v1/models"):
        made_up = "sk-repro-" in received.headers.get("authorization", "")
        status = "401 Unauthorized" if made_up else "200 OK"
        listed = b'{"object": "list", "data": []}'
        writer.write(http_answer(listed, "Content-Type: application/json", *COOKIES, status=status))
        await writer.drain()
        return
    if b'"stream":true' in received.body.replace(b" ", b""):
        body, kind = sse_frames("hi"), "Content-Type: text/event-stream"
    else:
        body, kind = completion("hi"), "Content-Type: application/json"
    writer.write(http_answer(body, kind, *COOKIES))
    await writer.drain()


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstreams_cookies_never_reach_other_callers_nor_clear_the_proxys_origin(
    start_proxy: ProxyFactory, stream: bool
) -> None:
    """A Set-Cookie on a stored answer goes to the caller it was sent for, never with a HIT to
    another (it is stored without it, as every upstream header). No relayed answer carries a
    `Clear-Site-Data`: on the proxy's origin, it would clear the operators' page's session."""
    with Scripted(cookie_setter) as upstream:
        proxy = start_proxy("--cache-scope", "shared", upstream=upstream.v1)
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "c"}]}
        if stream:
            body["stream"] = True
        sent = []
        for key in ("sk-first", "sk-second"):
            headers = {"Authorization": f"Bearer {key}"}
            sent.append(
                httpx.post(proxy.v1 + "/chat/completions", json=body, headers=headers, timeout=10)
            )
        passed = httpx.get(proxy.v1 + "/files", headers=headers, timeout=10)
    first, hit = sent
    assert first.headers["X-Repro-Cache"] == "MISS"
    assert first.headers.get_list("set-cookie") == ["session=victim-session; Path=/"]
    assert hit.headers["X-Repro-Cache"] == "HIT"
    assert hit.headers.get_list("set-cookie") == []
    assert passed.headers["X-Repro-Cache"] == "BYPASS"
    assert passed.headers.get_list("set-cookie") == ["session=victim-session; Path=/"]
    assert all("clear-site-data" not in answer.headers for answer in (first, hit, passed))


def embeddings_answer(embedding: object) -> bytes:
    item = {"object": "embedding", "index": 0, "embedding": embedding}
    usage = {"prompt_tokens": 2, "total_tokens": 2}
    answer = {"object": "list", "data": [item], "model": "text-embedding-3-small", "usage": usage}
    return http_answer(orjson.dumps(answer), "Content-Type: application/json")


@pytest.mark.parametrize(
    ("encoding", "embedding"),
    [
        ("float", None),
        ("float", "AAAAAA=="),
        ("float", ["0.1", "0.2"]),
        ("float", []),
        ("base64", None),
        ("base64", [0.1, 0.2]),
        ("base64", "not base64!"),
        ("base64", "AAAA"),  # three bytes: no float32 whole
    ],
)
def test_an_embeddings_answer_without_vectors_is_relayed_but_never_stored(
    start_proxy: ProxyFactory, encoding: str, embedding: object
) -> None:
    """A hostile or broken upstream's embeddings answer whose items hold no vector as the
    request asked for it (`"embedding": null`, strings where numbers were asked, numbers where
    base64 was) was stored and served to every later caller as a HIT, for as long as the entry
    lives. It reaches its own caller as it came, and the next request asks the upstream."""
    outcomes, asked = _embed_twice(start_proxy, encoding, embedding)
    assert [r.status_code for r in outcomes] == [200, 200]
    assert [r.headers["X-Repro-Cache"] for r in outcomes] == ["MISS", "MISS"]
    assert asked == 2


def _embed_twice(
    start_proxy: ProxyFactory, encoding: str, embedding: object
) -> tuple[list[httpx.Response], int]:
    """Two identical embeddings requests to an upstream answering `embedding` in each item:
    the answers, and how many reached the upstream."""
    with Scripted(fixed(embeddings_answer(embedding))) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        body = {"model": "text-embedding-3-small", "input": "hi", "encoding_format": encoding}
        headers = {"Authorization": "Bearer sk-tenant"}
        outcomes = [
            httpx.post(proxy.v1 + "/embeddings", json=body, headers=headers, timeout=10)
            for _ in range(2)
        ]
    return outcomes, len([r for r in upstream.received if "/embeddings" in r.request_line])


@pytest.mark.parametrize(
    ("encoding", "embedding"), [("float", [0.5, -1, 2e-3]), ("base64", "AAAAAA==")]
)
def test_an_embeddings_answer_with_its_vectors_is_stored(
    start_proxy: ProxyFactory, encoding: str, embedding: object
) -> None:
    outcomes, asked = _embed_twice(start_proxy, encoding, embedding)
    assert [r.headers["X-Repro-Cache"] for r in outcomes] == ["MISS", "HIT"]
    assert asked == 1


@pytest.mark.parametrize(
    ("route", "body", "choice", "stored"),
    [
        ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, {}, False),
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}]},
            {"message": None},
            False,
        ),
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}]},
            {"message": {"role": "assistant", "content": "Hi"}},
            True,
        ),
        ("/completions", {"prompt": "hi"}, {"text": None}, False),
        ("/completions", {"prompt": "hi"}, {"text": "Hi"}, True),
    ],
    ids=["chat-no-message", "chat-null-message", "chat", "completions-null-text", "completions"],
)
def test_a_choice_without_what_its_client_reads_is_relayed_but_never_stored(
    start_proxy: ProxyFactory,
    route: str,
    body: dict[str, object],
    choice: dict[str, object],
    stored: bool,
) -> None:
    """A broken or hostile upstream's choice with `"message": null` (chat) or no text
    (completions) reaches its caller as it came; stored, it was every later caller's HIT,
    on which the SDK fails."""
    choices = [{"index": 0, "finish_reason": "stop", **choice}]
    answer = {
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": choices,
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    served = http_answer(orjson.dumps(answer), "Content-Type: application/json")
    with Scripted(fixed(served)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        headers = {"Authorization": "Bearer sk-tenant"}
        outcomes = [
            httpx.post(
                proxy.v1 + route, json={"model": "gpt-4o-mini", **body}, headers=headers, timeout=10
            )
            for _ in range(2)
        ]
    assert [r.status_code for r in outcomes] == [200, 200]
    assert [r.json()["choices"] for r in outcomes] == [choices, choices]  # relayed as it came
    expected = ["MISS", "HIT"] if stored else ["MISS", "MISS"]
    assert [r.headers["X-Repro-Cache"] for r in outcomes] == expected
    asked = [r for r in upstream.received if route in r.request_line]
    assert len(asked) == (1 if stored else 2)


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/completions", {"prompt": "hi"}),
    ],
    ids=["chat", "completions"],
)
def test_an_answer_without_a_choice_is_relayed_but_never_stored(
    start_proxy: ProxyFactory, route: str, body: dict[str, object]
) -> None:
    """`"choices": []` from a gateway's glitch: a client reads `choices[0]` and fails. Streamed,
    such an answer never ended (no finish_reason) and was never stored; whole, it was every
    later caller's HIT."""
    answer = {"object": "chat.completion", "model": "gpt-4o-mini", "choices": []}
    json_never_stored(start_proxy, answer, route, {"model": "gpt-4o-mini", **body}, "sk-tenant")


def test_a_hit_of_an_answer_sent_without_a_content_type_has_the_one_the_miss_had(
    start_proxy: ProxyFactory,
) -> None:
    """The MISS reached its client labelled `application/octet-stream` (aiohttp's default for
    a body of no type), and every HIT with an empty `Content-Type:`."""
    served = http_answer(completion("untyped"))
    with Scripted(fixed(served)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        answers = [proxy.chat("untyped", key="sk-tenant") for _ in range(2)]
    assert [a.headers["X-Repro-Cache"] for a in answers] == ["MISS", "HIT"]
    assert answers[0].headers["Content-Type"] == answers[1].headers["Content-Type"] != ""


def test_a_response_stream_naming_two_ids_is_relayed_but_never_stored(
    start_proxy: ProxyFactory,
) -> None:
    """`response.created` named one id and `response.completed` another: stored, the answer
    was filed under the second, where the SDK (and the client) had the first."""

    def event(kind: str, response: dict[str, object]) -> bytes:
        data = orjson.dumps({"type": kind, "response": response})
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    made = {"id": "resp_first", "object": "response", "status": "in_progress", "output": []}
    done = {**made, "id": "resp_second", "status": "completed"}
    done["output"] = [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}]
    stream = event("response.created", made) + event("response.completed", done)
    relayed_never_stored(
        start_proxy,
        stream,
        ("Content-Type: text/event-stream",),
        lambda proxy: proxy.post("/responses", {**RESPONSE, "stream": True}, key="sk-tenant"),
    )
