"""Leftover attacks against pure logic and the key checker with an in-process upstream: a flood
of made-up keys, answers without the route's shape, gateway credential headers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, cast

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Settings
from proxy.core.call import Asked, Call, facts_of, prepare_with
from proxy.core.credentials import of_request, scope
from proxy.core.keyed import Keying
from proxy.core.policy import CacheScope
from proxy.errors import UpstreamTooLarge
from proxy.server.keycheck import MAX_CHECKS, MAX_LEARNING, KeyChecker
from proxy.upstream.client import Upstream

SECRET = b"0123456789abcdef0123456789abcdef"


def _call(key: str, shared: bool = True) -> tuple[Call, CIMultiDictProxy[str]]:
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {key}"}))
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "q"}]})
    asked = Asked.of("/v1/chat/completions", "", body, headers)
    tenant = scope(of_request(headers, ""), SECRET)
    cache_scope = CacheScope.SHARED if shared else CacheScope.KEY
    return prepare_with(Settings(cache_scope=cache_scope), tenant, asked), headers


class Hung:
    """An upstream that never answers: counts the calls in flight, and the most at once."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    async def send(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None, **_: bool
    ) -> Answered:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.Event().wait()
        finally:
            self.now -= 1
        raise AssertionError("never answers")


@dataclass
class Answered:
    """An upstream answer as the key checker reads it; `body` None: longer than any limit."""

    status: int
    body: bytes | None
    headers: ClassVar[dict[str, str]] = {"Content-Type": "application/json"}

    async def read(self, limit: int) -> bytes:
        if self.body is None:
            raise UpstreamTooLarge(f"larger than {limit} bytes")
        return self.body

    def release(self) -> None:
        pass


async def test_a_flood_of_made_up_keys_opens_a_bounded_number_of_upstream_calls() -> None:
    """Each made-up key is a check of its own (identical ones share a call): a flood opened
    one upstream call per key. Beyond MAX_CHECKS a check waits for a slot within its deadline,
    then fares as a check that timed out: in `shared` scope it reads nothing."""
    upstream = Hung()
    checker = KeyChecker(cast(Upstream, upstream), 300, lambda: 0.0, timeout=0.5, shared=True)
    flood = [_call("sk-" + uuid.uuid4().hex) for _ in range(MAX_CHECKS + 40)]
    async with asyncio.timeout(10):
        verdicts = await asyncio.gather(*(checker.accepted(*each) for each in flood))
    assert upstream.most == MAX_CHECKS  # the old code: one call per key, all at once
    assert verdicts == [False] * len(flood)
    await checker.close()


class Lists:
    """An upstream whose model list answers 2xx `listed` to every key; any other request is
    answered with `answered`."""

    def __init__(self, listed: Answered, answered: Answered) -> None:
        self.listed, self.answered = listed, answered

    async def send(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None, **_: bool
    ) -> Answered:
        return self.listed if method == "GET" else self.answered


async def test_a_model_list_past_the_read_bound_accepts_and_a_long_answer_says_nothing() -> None:
    """Only 64 KiB of a key check's answer is read. A longer 2xx model list is a list (a
    gateway routing to hundreds of models lists more than that; a refusal dressed as a 200 is
    short); a request's own answer that long says nothing, since a gateway's error may quote
    the caller's long prompt."""
    error = Answered(200, b'{"error": {"message": "bad key"}}')
    checker = KeyChecker(
        cast(Upstream, Lists(Answered(200, None), error)), 300, lambda: 0.0, timeout=5
    )
    assert await checker.accepted(*_call("sk-long-list", shared=False)) is True
    refused = KeyChecker(cast(Upstream, Lists(error, error)), 300, lambda: 0.0, timeout=5)
    assert await refused.accepted(*_call("sk-error-200", shared=False)) is False
    # shared scope: a list served to made-up keys proves nothing; the request is asked
    open_list = Lists(Answered(200, None), Answered(200, None))
    shared = KeyChecker(cast(Upstream, open_list), 300, lambda: 0.0, timeout=5, shared=True)
    assert await shared.accepted(*_call("sk-unknown")) is False  # not said: shared reads nothing


def _embeddings(*vectors: object) -> bytes:
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    return orjson.dumps({"object": "list", "data": data, "model": "m"})


def test_an_embeddings_answer_is_an_answer_only_with_the_vectors_asked_for() -> None:
    assert facts_of(_embeddings([0.1, 2]), False, "float") is not None
    assert facts_of(_embeddings("AAAAAAAAAAA="), False, "base64") is not None
    for bad in (None, [], [True], ["0.1"], [[0.1]], {"0": 0.1}, "AAAAAA=="):
        assert facts_of(_embeddings([0.1], bad), False, "float") is None, bad
    for bad in (None, "", "AAA", "AAAA", "@@@@", [0.1]):
        assert facts_of(_embeddings("AAAAAA==", bad), False, "base64") is None, bad
    assert facts_of(orjson.dumps({"object": "list", "data": []}), False, "float") is None
    # elsewhere, a data list is read as before
    assert facts_of(orjson.dumps({"data": [{"id": "x"}]}), False) is not None


def _choices(*choices: object) -> bytes:
    return orjson.dumps({"object": "chat.completion", "choices": list(choices), "model": "m"})


def test_a_chat_or_completions_answer_is_one_only_with_what_its_client_reads() -> None:
    """A choice with `"message": null` (chat) or without its text (completions), stored, was
    every later caller's HIT, which the SDK fails on (`choices[0].message.content`)."""
    message = {"index": 0, "message": {"role": "assistant", "content": "Hi"}}
    assert facts_of(_choices(message), False, "message") is not None
    assert facts_of(_choices({"index": 0, "message": {"role": "assistant"}}), False, "message")
    for bad in (None, "Hi", ["Hi"], 0):
        answer = _choices(message, {"index": 1, "message": bad})
        assert facts_of(answer, False, "message") is None, bad
    assert facts_of(_choices({"index": 0, "text": ""}), False, "text") is not None
    for bad in (None, ["Hi"], {"text": "Hi"}, 0):
        assert facts_of(_choices({"index": 0, "text": bad}), False, "text") is None, bad
    assert facts_of(_choices({"index": 0}), False, "text") is None
    # a chat answer with no choices field is not one, whatever else it holds
    assert facts_of(orjson.dumps({"data": [{"id": "x"}]}), False, "message") is None
    # nor one with no choice, where a client reads `choices[0]`: streamed, it was never stored
    for shape in ("message", "text"):
        assert facts_of(orjson.dumps({"choices": []}), False, shape) is None


def test_each_route_asks_its_own_shape() -> None:
    for route, body, expected in (
        ("/v1/chat/completions", {"model": "m", "messages": []}, "message"),
        ("/v1/completions", {"model": "m", "prompt": "p"}, "text"),
        ("/v1/responses", {"model": "m", "input": "i"}, None),
    ):
        asked = Asked.of(route, "", orjson.dumps(body), CIMultiDictProxy(CIMultiDict()))
        assert prepare_with(Settings(), "t", asked).shape == expected, route


def test_the_vectors_asked_for_follow_the_requests_encoding_format() -> None:
    for encoding, expected in (("base64", "base64"), ("float", "float"), (None, "float")):
        body = {"model": "m", "input": "hi"} | ({"encoding_format": encoding} if encoding else {})
        asked = Asked.of("/v1/embeddings", "", orjson.dumps(body), CIMultiDictProxy(CIMultiDict()))
        assert prepare_with(Settings(), "t", asked).shape == expected
    chat, _ = _call("sk-a")
    assert chat.shape == "message"


def test_gateway_credential_headers_make_tenants_and_idempotency_key_nothing() -> None:
    """Portkey's `x-portkey-virtual-key` selects whose provider key pays (and which provider
    answers), `x-portkey-api-key` is the caller's own: both are credentials by default, so
    callers differing in either never share a partition in `key` scope, and neither is ever a
    keyed value (a store would hold its digest). `Idempotency-Key`, new for every request, is
    neither a credential nor keyed, in either scope."""
    base = {"x-portkey-api-key": "pk-one", "x-portkey-virtual-key": "vk-openai"}
    variants = [
        base,
        base | {"x-portkey-virtual-key": "vk-azure"},
        base | {"x-portkey-api-key": "pk-two"},
    ]
    tenants = {scope(of_request(CIMultiDictProxy(CIMultiDict(h)), ""), SECRET) for h in variants}
    assert len(tenants) == len(variants)
    alone = CIMultiDictProxy(CIMultiDict({"x-portkey-virtual-key": "vk-openai"}))
    assert of_request(alone, "") == (("x-portkey-virtual-key", "vk-openai"),)
    for shared in (False, True):
        keying = Keying(shared=shared)
        for name in ("x-portkey-api-key", "x-portkey-virtual-key", "Idempotency-Key"):
            assert not keying.keys(name.lower()), (name, shared)
    with_retry_id = CIMultiDictProxy(CIMultiDict({"Idempotency-Key": "req-1"}))
    assert of_request(with_retry_id, "") == ()
    assert Keying().lines(with_retry_id) == Keying(shared=True).lines(with_retry_id) == ()


class Open:
    """A gateway that answers everyone, made-up keys included; counts the calls those made."""

    def __init__(self) -> None:
        self.made_up = 0

    async def send(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None, **_: bool
    ) -> Answered:
        self.made_up += any("sk-repro-" in value for value in headers.values())
        listed = b'{"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]}'
        return Answered(200, listed if method == "GET" else b'{"choices": []}')


async def test_invented_credential_names_cannot_make_the_key_check_ask_without_bound() -> None:
    """A shape is the credential header names a request carries, which a caller may invent
    per request: each new one cost the upstream two more calls with made-up credentials, one
    of them the caller's whole body. Past MAX_LEARNING per interval the upstream is taken as
    unable to say (the request reads nothing shared); the budget returns with the interval."""
    upstream, now = Open(), [0.0]
    checker = KeyChecker(cast(Upstream, upstream), 300, lambda: now[0], timeout=5, shared=True)

    async def ask(number: int) -> bool:
        sent = {"Authorization": "Bearer sk-a", f"x-v{number}-token": "t"}
        headers = CIMultiDictProxy(CIMultiDict(sent))
        body = orjson.dumps({"model": "gpt-4o-mini", "messages": []})
        asked = Asked.of("/v1/chat/completions", "", body, headers)
        tenant = scope(of_request(headers, ""), SECRET)  # a new tenant per invented name
        call = prepare_with(Settings(cache_scope=CacheScope.SHARED), tenant, asked)
        return await checker.accepted(call, headers)

    verdicts = [await ask(number) for number in range(MAX_LEARNING + 40)]
    assert upstream.made_up == MAX_LEARNING  # the code before: two per request
    assert verdicts[-40:] == [False] * 40  # past the budget: nothing shared is read
    now[0] = 301.0
    await ask(10_000)
    assert upstream.made_up == MAX_LEARNING + 2
    await checker.close()
