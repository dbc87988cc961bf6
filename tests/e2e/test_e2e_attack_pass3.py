"""Attack pass 3, against real proxy processes and hostile upstreams (tests/hostile.py).

A value nested 255 to 1023 levels deep: orjson reads it and cannot write it again. An upstream
answering with one made every request that met it a 500 (a stream's fingerprint, a streamed
response fetched by id).

A chain (`previous_response_id`) on an id outside the form the proxy indexes, as a gateway
makes them, or on a stored item by its id, skipped the rules that keep a chain for the tenant
it belongs to; and an id answered through a routing query parameter took over the owner's."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from tests.fixtures_procs import ProxyFactory
from tests.hostile import Received, Scripted, http_answer
from tests.unit.test_attack_pass3 import DEEP, deep_response_stream

AUTH = {"Authorization": "Bearer sk-a"}
WAIT = 10.0


NOT_FOUND = http_answer(
    orjson.dumps(
        {
            "error": {
                "message": "not found",
                "type": "invalid_request_error",
                "code": "previous_response_not_found",
            }
        }
    ),
    "Content-Type: application/json",
    status="400 Bad Request",
)
"""The upstream's answer to a chain on a response the caller's account does not own."""


def sse_answer(body: bytes) -> bytes:
    return http_answer(body, "Content-Type: text/event-stream")


async def responses_upstream(writer: asyncio.StreamWriter, received: Received) -> None:
    """The deep stream to a create, an empty model list to a key check."""
    if received.request_line.startswith("POST"):
        writer.write(sse_answer(deep_response_stream()))
    else:
        writer.write(http_answer(b'{"object":"list","data":[]}', "Content-Type: application/json"))
    await writer.drain()


def test_a_streamed_response_too_deep_to_write_again_is_a_miss_by_id_not_a_500(
    start_proxy: ProxyFactory,
) -> None:
    """The stream is relayed and replayed byte for byte; its id, whose object the proxy cannot
    write out on its own, is not found (504 cache_miss, whole or as its events), as a response
    the proxy does not hold."""
    with Scripted(responses_upstream) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        body = {"model": "m", "input": "x", "stream": True}
        made = httpx.post(proxy.v1 + "/responses", json=body, headers=AUTH, timeout=WAIT)
        assert made.status_code == 200 and made.content == deep_response_stream()
        again = httpx.post(proxy.v1 + "/responses", json=body, headers=AUTH, timeout=WAIT)
        assert again.headers["X-Repro-Cache"] == "HIT" and again.content == made.content
        for query in ("", "?stream=true"):
            fetched = httpx.get(
                proxy.v1 + "/responses/resp_deep" + query,
                headers={**AUTH, "Cache-Control": "only-if-cached"},
                timeout=WAIT,
            )
            assert fetched.status_code == 504, fetched.text
            assert fetched.json()["error"]["code"] == "cache_miss"
        assert httpx.get(proxy.url + "/healthz", timeout=WAIT).status_code == 200


def deep_fingerprint_stream() -> bytes:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "system_fingerprint": "D",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}],
    }
    return b"data: " + orjson.dumps(chunk).replace(b'"D"', DEEP) + b"\n\ndata: [DONE]\n\n"


def test_a_stream_whose_fingerprint_is_too_deep_to_write_is_relayed_and_never_stored(
    start_proxy: ProxyFactory,
) -> None:
    """A fingerprint that is no token is a claim the proxy keeps as a digest of its JSON; one
    it cannot write names nothing it can compare, so the stream is spoiled: relayed, not kept."""
    with Scripted(lambda writer, _: _write(writer, sse_answer(deep_fingerprint_stream()))) as up:
        proxy = start_proxy(upstream=up.v1)
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
        for _ in range(2):
            relayed = httpx.post(
                proxy.v1 + "/chat/completions", json=body, headers=AUTH, timeout=WAIT
            )
            assert relayed.status_code == 200, relayed.text
            assert relayed.content == deep_fingerprint_stream()
            assert relayed.headers["X-Repro-Cache"] == "MISS"
        assert len(up.received) == 2


async def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


# --- a chain on an id the proxy cannot track --------------------------------------------------

KEYS = ("sk-alice", "sk-bob")
SECRET = "Alice's continuation"


def gateway_id(number: int) -> str:
    """An id as LiteLLM's proxy makes them: `resp_` and standard base64 of the provider, model
    and upstream id, 150 characters or more, with `+` and `=`: no id the proxy indexes."""
    return f"resp_{'bGl0ZWxsbTpjdXN0b21fbGxtX3Byb3ZpZGVy+' * 4}{number:04d}=="


class Gateway:
    """Answers a Responses request with a new id of the gateway's form and an output message
    of its own id; a request continuing a response (`previous_response_id`) or naming one of
    its items (`item_reference`) only for the tenant that made it (as the real API does, else
    400); the model list only to its known keys."""

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}
        self.posted: list[str] = []

    async def __call__(self, writer: asyncio.StreamWriter, received: Received) -> None:
        key = received.headers.get("authorization", "").removeprefix("Bearer ")
        if not received.request_line.startswith("POST"):
            known = key in KEYS
            body = b'{"object":"list","data":[{"id":"m","object":"model"}]}'
            status = "200 OK" if known else "401 Unauthorized"
            await _write(writer, http_answer(body, "Content-Type: application/json", status=status))
            return
        self.posted.append(key)
        asked = orjson.loads(received.body)
        named = [asked.get("previous_response_id")]
        if isinstance(asked["input"], list):
            named += [item.get("id") for item in asked["input"] if "role" not in item]
        named = [name for name in named if name is not None]
        if any(self.owners.get(name) != key for name in named):
            await _write(writer, NOT_FOUND)
            return
        made, item = gateway_id(len(self.owners)), f"msg_{len(self.owners)}"
        self.owners[made] = self.owners[item] = key
        text = SECRET if named else "First answer."
        response = {
            "object": "response", "id": made, "status": "completed", "model": "m",
            "output": [{"type": "message", "id": item, "role": "assistant",
                        "content": [{"type": "output_text", "text": text}]}],
        }  # fmt: skip
        await _write(writer, http_answer(orjson.dumps(response), "Content-Type: application/json"))


TURN = {"role": "user", "content": "What did I tell you?"}
CONTINUATIONS = {
    "chain on a gateway's id": lambda first: {
        "input": "What did I tell you?",
        "previous_response_id": first["id"],
    },
    "item reference": lambda first: {
        "input": [{"type": "item_reference", "id": first["output"][0]["id"]}, TURN],
    },
    "item reference without its type": lambda first: {
        "input": [{"id": first["output"][0]["id"]}, TURN],
    },
}


@pytest.mark.parametrize("continuation", sorted(CONTINUATIONS))
def test_in_shared_scope_a_continuation_the_proxy_cannot_track_is_never_served_from_the_cache(
    start_proxy: ProxyFactory, continuation: str
) -> None:
    """The rules of proxy/server/chains.py (the upstream's deletion, who was answered with the
    response) need a response id of the form the proxy indexes and marks. A gateway's ids
    (LiteLLM's are base64, longer than 128 characters) are not, and an input item naming a
    stored item by its id alone names no response: either request skipped both rules, so a
    tenant who learnt the id and sent the owner's next turn read the owner's continuation (in
    `key` scope, one on a deleted response still HIT). Such a request is the upstream's alone."""
    gateway = Gateway()
    with Scripted(gateway) as upstream:
        proxy = start_proxy("--cache-scope", "shared", upstream=upstream.v1)

        def ask(key: str, body: dict[str, object]) -> httpx.Response:
            headers = {"Authorization": f"Bearer {key}"}
            return httpx.post(proxy.v1 + "/responses", json=body, headers=headers, timeout=WAIT)

        first = ask("sk-alice", {"model": "m", "input": "Hello."}).json()
        assert len(first["id"]) > 128
        continued = {"model": "m", **CONTINUATIONS[continuation](first)}
        made = ask("sk-alice", continued)
        assert made.status_code == 200 and SECRET in made.text
        assert ask("sk-bob", {"model": "m", "input": "Hi."}).status_code == 200  # served once

        for _ in range(2):
            sent = len(gateway.posted)
            theirs = ask("sk-bob", continued)
            assert SECRET not in theirs.text
            assert theirs.status_code == 400 and gateway.posted[sent:] == ["sk-bob"]
        again = ask("sk-alice", continued)  # the owner's own: the upstream's too
        assert again.headers["X-Repro-Cache"] == "BYPASS" and gateway.posted[-1] == "sk-alice"


# --- a response id answered through another routing -------------------------------------------


class Routed:
    """A gateway that routes by `?provider=`: the default provider makes new ids and continues
    a response only for its owner; `provider=own` is a tenant's own server, answering with any
    id it is told (`input` "echo:<id>")."""

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}
        self.posted: list[tuple[str, str]] = []

    async def __call__(self, writer: asyncio.StreamWriter, received: Received) -> None:
        key = received.headers.get("authorization", "").removeprefix("Bearer ")
        target = received.request_line.split(" ")[1]
        if not received.request_line.startswith("POST"):
            status = "200 OK" if key in KEYS else "401 Unauthorized"
            body = b'{"object":"list","data":[{"id":"m","object":"model"}]}'
            await _write(writer, http_answer(body, "Content-Type: application/json", status=status))
            return
        self.posted.append((key, target))
        asked = orjson.loads(received.body)
        previous, text = asked.get("previous_response_id"), str(asked["input"])
        if "provider=own" in target:
            made = text.removeprefix("echo:")
        elif previous is not None and self.owners.get(previous) != key:
            await _write(writer, NOT_FOUND)
            return
        else:
            made = f"resp_{len(self.owners):04d}"
            self.owners[made] = key
        said = SECRET if previous is not None else "First answer."
        response = {
            "object": "response", "id": made, "status": "completed", "model": "m",
            "output": [{"type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": said}]}],
        }  # fmt: skip
        await _write(writer, http_answer(orjson.dumps(response), "Content-Type: application/json"))


def test_an_id_answered_through_a_routing_query_never_opens_anothers_chain(
    start_proxy: ProxyFactory,
) -> None:
    """In `shared` scope a tenant routing through its own server (here `?provider=own`, which a
    gateway reads as keyed headers are read) answered its own request with the owner's response
    id: the id index, keyed by keyed headers and api-version but not by the rest of the keyed
    query, then pointed that id at the tenant's own entry, which it holds, and the owner's
    stored continuation was the tenant's to read. An id's index names the routing it came by."""
    gateway = Routed()
    with Scripted(gateway) as upstream:
        proxy = start_proxy("--cache-scope", "shared", upstream=upstream.v1)

        def ask(key: str, body: dict[str, object], query: str = "") -> httpx.Response:
            headers = {"Authorization": f"Bearer {key}"}
            url = proxy.v1 + "/responses" + query
            return httpx.post(url, json=body, headers=headers, timeout=WAIT)

        first = ask("sk-alice", {"model": "m", "input": "Hello."}).json()["id"]
        chained = {"model": "m", "input": "What did I tell you?", "previous_response_id": first}
        assert SECRET in ask("sk-alice", chained).text
        assert ask("sk-alice", chained).headers["X-Repro-Cache"] == "HIT"

        echoed = ask("sk-bob", {"model": "m", "input": f"echo:{first}"}, "?provider=own")
        assert echoed.status_code == 200 and echoed.json()["id"] == first
        sent = len(gateway.posted)
        theirs = ask("sk-bob", chained)
        assert SECRET not in theirs.text
        assert theirs.status_code == 400 and gateway.posted[sent:] == [("sk-bob", "/v1/responses")]
        assert ask("sk-alice", chained).headers["X-Repro-Cache"] == "HIT"  # still the owner's
