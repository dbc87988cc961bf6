"""Inputs the cache key does not cover, against a real proxy process and an upstream written
for the attack (tests/hostile.py): an answer the upstream says depends on something else than
the body and the caller's key, or says may not be stored, must never reach another caller."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from tests.fixtures_procs import ProxyFactory
from tests.hostile import (
    CHAT,
    STREAM,
    Received,
    Scripted,
    Writer,
    completion,
    http_answer,
    sse_frames,
)

AUTH = {"Authorization": "Bearer sk-victim", "Content-Type": "application/json"}


def whose(request: Received) -> str:
    """What in the request this upstream's answer depends on besides the body."""
    return request.headers.get("openai-organization", "none")


def answering_with(*extra: str) -> Writer:
    """An upstream whose answer names the caller's organization, sent with `extra` headers."""

    async def write(writer: asyncio.StreamWriter, request: Received) -> None:
        if b'"stream":true' in request.body:
            body, kind = sse_frames(whose(request)), "text/event-stream"
        else:
            body, kind = completion(whose(request)), "application/json"
        writer.write(http_answer(body, f"Content-Type: {kind}", *extra))
        await writer.drain()

    return write


def content_of(response: httpx.Response) -> str:
    if response.headers["content-type"].startswith("text/event-stream"):
        first = response.text.split("\n\n")[0].removeprefix("data: ")
        return str(orjson.loads(first)["choices"][0]["delta"]["content"])
    return str(response.json()["choices"][0]["message"]["content"])


def ask_as(proxy_v1: str, organization: str, body: bytes) -> httpx.Response:
    headers = {**AUTH, "OpenAI-Organization": organization}
    return httpx.post(proxy_v1 + "/chat/completions", content=body, headers=headers, timeout=10)


REFUSING = [
    (
        "Vary: User-Agent",
    ),  # a header the key leaves out (see test_keyed_headers.py for one it reads)
    ("Vary: Accept-Encoding, X-Stainless-Lang",),
    ("Vary: *",),
    ("Cache-Control: private",),
    ("Cache-Control: no-store",),
    ("Cache-Control: max-age=0, No-Store",),
]


@pytest.mark.parametrize("body", [CHAT, STREAM], ids=["whole", "stream"])
@pytest.mark.parametrize("extra", REFUSING, ids=[h[0] for h in REFUSING])
def test_an_answer_the_upstream_varies_or_forbids_storing_is_never_served_to_another_request(
    start_proxy: ProxyFactory, extra: tuple[str, ...], body: bytes
) -> None:
    """As Varnish and nginx read them: `Vary` naming a header the key leaves out, or
    `Cache-Control: no-store` / `private`, means the answer is not stored, so one
    organization's answer is never a HIT for another one sending the same body."""
    with Scripted(answering_with(*extra)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        first = ask_as(proxy.v1, "org-victim", body)
        second = ask_as(proxy.v1, "org-attacker", body)
        again = ask_as(proxy.v1, "org-victim", body)
    assert content_of(first) == "org-victim"
    assert content_of(second) == "org-attacker"
    assert content_of(again) == "org-victim"
    assert [r.headers["x-repro-cache"] for r in (first, second, again)] == ["MISS"] * 3
    assert len(upstream.received) == 3


ALLOWING = [
    ("Cache-Control: no-cache, must-revalidate",),  # what Azure OpenAI sends
    ("Vary: Accept-Encoding",),  # the proxy asks with its own and stores the answer decoded
    ("Vary: Authorization, api-key",),  # the caller's key partitions the cache
]


@pytest.mark.parametrize("extra", ALLOWING, ids=[h[0] for h in ALLOWING])
def test_an_answer_varying_only_by_what_the_key_covers_is_still_stored(
    start_proxy: ProxyFactory, extra: tuple[str, ...]
) -> None:
    with Scripted(answering_with(*extra)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        first = ask_as(proxy.v1, "org-one", CHAT)
        second = ask_as(proxy.v1, "org-one", CHAT)
    assert [first.headers["x-repro-cache"], second.headers["x-repro-cache"]] == ["MISS", "HIT"]
    assert second.content == first.content
    assert len(upstream.received) == 1


def test_in_shared_scope_an_answer_varying_by_the_callers_key_is_not_stored(
    start_proxy: ProxyFactory,
) -> None:
    """One cache for all keys covers no key: `Vary: Authorization` then says the next caller
    could get another answer."""
    with Scripted(answering_with("Vary: Authorization")) as upstream:
        proxy = start_proxy("--cache-scope", "shared", upstream=upstream.v1)
        first = ask_as(proxy.v1, "org-one", CHAT)
        second = ask_as(proxy.v1, "org-one", CHAT)
    assert [first.headers["x-repro-cache"], second.headers["x-repro-cache"]] == ["MISS", "MISS"]
    asked = [r for r in upstream.received if "chat" in r.request_line]
    assert [r.headers["authorization"] for r in asked].count(AUTH["Authorization"]) == 2


async def routes_by_exact_path(writer: asyncio.StreamWriter, request: Received) -> None:
    """Matches paths as sent, without decoding them (as Express does), and hands anything it
    does not know to another backend that answers 200 too."""
    target = request.request_line.split(" ")[1]
    path = target.partition("?")[0]
    backend = "chat" if path == "/v1/chat/completions" else "catch-all"
    writer.write(http_answer(completion(backend), "Content-Type: application/json"))
    await writer.drain()


@pytest.mark.parametrize(
    "spelling", ["/v1/chat/%63ompletions", "/v1/%63hat/completions", "/v1/chat/completion%73"]
)
def test_the_upstream_receives_the_very_path_the_key_names_however_the_client_spelled_it(
    start_proxy: ProxyFactory, spelling: str
) -> None:
    """The router reads `%63ompletions` as `completions`, and so does the key: an upstream
    that does not must still get the path the key names, or an attacker's request would store
    another resource's answer under everyone's key for the plain path."""
    with Scripted(routes_by_exact_path) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        with httpx.Client(timeout=10) as client:
            poison = client.send(
                client.build_request(
                    "POST",
                    proxy.url + "/v1/chat/completions",
                    content=CHAT,
                    headers=AUTH,
                    extensions={"target": (spelling + "?q=a%26b").encode()},
                )
            )
        victim = httpx.post(proxy.v1 + "/chat/completions?q=a%26b", content=CHAT, headers=AUTH)
    assert content_of(poison) == "chat"
    assert content_of(victim) == "chat"
    assert victim.headers["x-repro-key"] == poison.headers["x-repro-key"]
    lines = [r.request_line for r in upstream.received]
    assert lines == ["POST /v1/chat/completions?q=a%26b HTTP/1.1"]


async def echo_max_tokens(writer: asyncio.StreamWriter, request: Received) -> None:
    """Answers with the max_tokens it read, as Python's parser reads it: exactly."""
    import json

    asked = json.loads(request.body).get("max_tokens")
    writer.write(http_answer(completion(str(asked)), "Content-Type: application/json"))
    await writer.drain()


def test_two_integers_beyond_64_bits_never_share_a_key_when_bodies_are_forwarded_as_is(
    start_proxy: ProxyFactory,
) -> None:
    """The key reads an integer beyond 64 bits as the nearest double; with `--enforce off`
    the upstream reads the bytes as sent, maybe exactly: 2^64 and 2^64 + 1 would share a key,
    the second caller getting the first one's answer. Both are refused with OpenAI's 400
    before the upstream is asked; 2^64 - 1 still goes through exactly."""

    def ask(number: int) -> httpx.Response:
        body = b'{"model": "m", "messages": [], "max_tokens": ' + str(number).encode() + b"}"
        return httpx.post(proxy.v1 + "/chat/completions", content=body, headers=AUTH, timeout=10)

    with Scripted(echo_max_tokens) as upstream:
        proxy = start_proxy("--enforce", "off", upstream=upstream.v1)
        wide = [ask(2**64), ask(2**64 + 1), ask(-(2**63) - 1)]
        widest = ask(2**64 - 1)
    assert [r.status_code for r in wide] == [400, 400, 400]
    assert {r.json()["error"]["code"] for r in wide} == {"invalid_json"}
    assert "beyond 64 bits" in wide[1].json()["error"]["message"]
    assert widest.status_code == 200
    assert content_of(widest) == str(2**64 - 1)
    assert len(upstream.received) == 1


async def fingerprint_per_deployment(writer: asyncio.StreamWriter, request: Received) -> None:
    """Azure OpenAI: the deployment in the path decides the model; the body's `model` is not
    read. Each deployment answers with its own fingerprint."""
    deployment = request.request_line.partition("/deployments/")[2].partition("/")[0]
    answer = orjson.loads(completion("from " + deployment))
    answer["system_fingerprint"] = "fp_" + deployment
    writer.write(http_answer(orjson.dumps(answer), "Content-Type: application/json"))
    await writer.drain()


def test_a_deployments_fingerprint_is_tracked_under_it_whatever_model_the_body_names(
    start_proxy: ProxyFactory,
) -> None:
    """Under `follow` an entry is served while its fingerprint is its model's current one. On
    a per-deployment route the deployment answers, whatever the body's `model` says: were that
    name the one tracked, any tenant could post to a small deployment naming another
    deployment's model, make the small one's fingerprint that model's current one, and so
    turn every tenant's stored answers for it into misses (and a rotation in the metrics)."""

    def ask(deployment: str, model: str, key: str) -> httpx.Response:
        body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
        path = f"/openai/deployments/{deployment}/chat/completions?api-version=2024-10-21"
        headers = {"api-key": key, "Content-Type": "application/json"}
        return httpx.post(proxy.url + path, content=body, headers=headers, timeout=10)

    with Scripted(fingerprint_per_deployment) as upstream:
        proxy = start_proxy(upstream=upstream.v1.removesuffix("/v1"))
        stored = ask("big", "big", "az-victim")
        attack = ask("mini", "big", "az-attacker")
        again = ask("big", "big", "az-victim")
        changes = proxy.metric("repro_fingerprint_changes_total", model="big")
    assert stored.headers["x-repro-fingerprint"] == "fp_big"
    assert attack.headers["x-repro-fingerprint"] == "fp_mini"
    assert again.headers["x-repro-cache"] == "HIT"
    assert changes == 0
    assert len([r for r in upstream.received if r.request_line.startswith("POST")]) == 2


GATEWAY_KEYS = {
    "ocp-apim-subscription-key": "apim-victim",  # Azure API Management before Azure OpenAI
    "cf-aig-authorization": "Bearer cf-victim",  # Cloudflare AI Gateway
    "x-goog-api-key": "goog-victim",  # Google's APIs
    "x-portkey-api-key": "pk-victim",
    "x-portkey-virtual-key": "vk-victim",
}


def gateway_checking(name: str, valid: str) -> Writer:
    """A gateway that takes its callers' key in `name` and refuses any other request."""

    async def write(writer: asyncio.StreamWriter, request: Received) -> None:
        if request.headers.get(name) == valid:
            answer = http_answer(completion("for " + name), "Content-Type: application/json")
        else:
            refusal = b'{"error": {"message": "no key", "type": "invalid_request_error"}}'
            answer = http_answer(refusal, "Content-Type: application/json", status="401 No")
        writer.write(answer)
        await writer.drain()

    return write


@pytest.mark.parametrize("name", sorted(GATEWAY_KEYS))
def test_a_gateways_own_key_header_partitions_the_cache_without_being_configured(
    start_proxy: ProxyFactory, name: str
) -> None:
    """A well-known gateway's key header counts as a credential by default: read as none, its
    callers were all `anonymous`, and once the gateway served one of them any caller without a
    key (or with a made-up one) read their answers."""
    valid = GATEWAY_KEYS[name]
    with Scripted(gateway_checking(name, valid)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)

        def ask(headers: dict[str, str]) -> httpx.Response:
            headers = {"Content-Type": "application/json", **headers}
            url = proxy.v1 + "/chat/completions"
            return httpx.post(url, content=CHAT, headers=headers, timeout=10)

        victim = ask({name: valid})
        keyless = ask({})
        made_up = ask({name: "made-up"})
        again = ask({name: valid})
    assert victim.status_code == 200
    assert [keyless.status_code, made_up.status_code] == [401, 401]
    assert again.headers["x-repro-cache"] == "HIT"


SPOOFED = (
    "X-Repro-Cache: HIT",
    "X-Repro-Seed: 7",
    "X-Repro-Seed-Source: client",
    "X-Repro-Fingerprint: fp_spoofed",
    "X-Repro-Key: 0000",
)


async def speaks_for_the_proxy(writer: asyncio.StreamWriter, request: Received) -> None:
    """Answers with the proxy's own headers, claiming a HIT, a seed and a fingerprint."""
    if b"embeddings" in request.head:
        body = b'{"object": "list", "data": [{"embedding": [0.5], "index": 0}]}'
    else:
        body = completion("spoofed")
    writer.write(http_answer(body, "Content-Type: application/json", *SPOOFED))
    await writer.drain()


@pytest.mark.parametrize("path", ["/embeddings", "/files", "/chat/completions"])
def test_an_upstream_cannot_speak_for_the_proxy_in_its_x_repro_headers(
    start_proxy: ProxyFactory, path: str
) -> None:
    """`X-Repro-*` answer headers are the proxy's word to its clients (a CI run checks the seed
    and the cache outcome by them): the proxy drops an upstream's, as it drops a client's on
    the way up, where it has no word of its own to set over them (an embedding has no seed)."""
    with Scripted(speaks_for_the_proxy) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        body = b'{"model": "m", "input": "x"}' if path == "/embeddings" else CHAT
        answer = httpx.post(proxy.v1 + path, content=body, headers=AUTH, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["x-repro-cache"] in {"MISS", "BYPASS"}
    assert answer.headers.get("x-repro-key") != "0000"
    assert answer.headers.get("x-repro-fingerprint") != "fp_spoofed"
    assert answer.headers.get("x-repro-seed") != "7"
    assert answer.headers.get("x-repro-seed-source") != "client"
    assert len(answer.headers.get_list("x-repro-cache")) == 1


def keeps_conversations() -> Writer:
    """A Responses upstream that keeps state, as OpenAI's does: each answer in a conversation
    adds its turn to it, and a stored prompt's latest version is whatever was published last."""
    turns: dict[str, int] = {}

    async def write(writer: asyncio.StreamWriter, request: Received) -> None:
        asked = orjson.loads(request.body)
        conversation = str(asked.get("conversation"))
        turns[conversation] = turns.get(conversation, 0) + 1
        text = f"turn {turns[conversation]} of {conversation}"
        answer = {
            "id": f"resp_{len(turns)}_{turns[conversation]}",
            "object": "response",
            "status": "completed",
            "model": "gpt-4o-mini",
            "output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}],
        }
        writer.write(http_answer(orjson.dumps(answer), "Content-Type: application/json"))
        await writer.drain()

    return write


@pytest.mark.parametrize(
    "state",
    [{"conversation": "conv_1"}, {"conversation": {"id": "conv_1"}}, {"prompt": {"id": "pmpt_1"}}],
    ids=["conversation", "conversation-object", "prompt-unpinned"],
)
def test_a_response_reading_state_the_upstream_changes_is_never_answered_from_the_cache(
    start_proxy: ProxyFactory, state: dict[str, object]
) -> None:
    """The same body in a conversation asks about a longer conversation each time (and a HIT
    would not add the turn the upstream keeps); an unpinned stored prompt is its latest
    version. Neither the key can name: both are forwarded each time, never stored."""
    body = orjson.dumps({"model": "gpt-4o-mini", "input": "and then?", **state})
    with Scripted(keeps_conversations()) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        answers = [
            httpx.post(proxy.v1 + "/responses", content=body, headers=AUTH, timeout=10)
            for _ in range(2)
        ]
    texts = [a.json()["output"][0]["content"][0]["text"] for a in answers]
    assert [t.split(" of ")[0] for t in texts] == ["turn 1", "turn 2"]
    assert [a.headers["x-repro-cache"] for a in answers] == ["BYPASS", "BYPASS"]


def test_a_response_with_a_pinned_prompt_version_is_cached(start_proxy: ProxyFactory) -> None:
    body = orjson.dumps(
        {"model": "gpt-4o-mini", "input": "hi", "prompt": {"id": "pmpt_1", "version": "3"}}
    )
    with Scripted(keeps_conversations()) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        answers = [
            httpx.post(proxy.v1 + "/responses", content=body, headers=AUTH, timeout=10)
            for _ in range(2)
        ]
    assert [a.headers["x-repro-cache"] for a in answers] == ["MISS", "HIT"]


REROUTES = {
    "X-Original-URL": "/v1/other",  # IIS URL Rewrite, Symfony
    "X-Rewrite-URL": "/v1/other",
    "X-HTTP-Method-Override": "GET",  # Express's method-override, Google's APIs
    "X-Forwarded-Host": "attacker.example",  # absolute URLs built from it
    "Forwarded": "host=attacker.example;proto=http",
}


async def reads_rerouting_headers(writer: asyncio.StreamWriter, request: Received) -> None:
    """An upstream (or a framework in front of it) that honours every header in REROUTES."""
    honoured = [name for name in REROUTES if name.lower() in request.headers]
    content = "rerouted by " + honoured[0] if honoured else "chat"
    writer.write(http_answer(completion(content), "Content-Type: application/json"))
    await writer.drain()


@pytest.mark.parametrize("name", sorted(REROUTES))
def test_a_header_that_reroutes_the_request_upstream_never_poisons_a_cached_route(
    start_proxy: ProxyFactory, name: str
) -> None:
    """The key names the path, the method and the upstream's host; a header some servers read
    instead of them must not reach the upstream from a cached route, or the attacker's
    rerouted answer would be stored under everyone's key for the plain request."""
    with Scripted(reads_rerouting_headers) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        url = proxy.v1 + "/chat/completions"
        poison = httpx.post(url, content=CHAT, headers={**AUTH, name: REROUTES[name]}, timeout=10)
        victim = httpx.post(url, content=CHAT, headers=AUTH, timeout=10)
    assert content_of(poison) == "chat"
    assert content_of(victim) == "chat"
    assert all(name.lower() not in r.headers for r in upstream.received)
