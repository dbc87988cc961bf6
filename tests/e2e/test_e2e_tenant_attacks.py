"""A hostile client sharing the proxy with other tenants: what it can read, poison or hold up,
against real proxy processes and an upstream written here."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.fixtures_procs import Proxy, ProxyFactory
from tests.hostile import Received, Scripted, http_answer

ALICE = {"Authorization": "Bearer sk-alice"}
MALLORY = {"Authorization": "Bearer sk-mallory"}  # made up: the upstream refuses it for gpt


def _question(model: str, text: str = "what did alice ask?") -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": text}]})


class Gateway:
    """A gateway with per-route access: its model list is public, and it serves some requests
    to anyone (a free local model, a provider picked by a routing header or a query parameter),
    but `gpt-4o-mini` from its paid provider only to `sk-alice`."""

    def __init__(self) -> None:
        self.numbers = itertools.count()

    def is_open(self, request: Received) -> bool:
        target = request.request_line.split(" ")[1]
        routed = request.headers.get("x-provider") == "local" or "provider=local" in target
        return routed or orjson.loads(request.body).get("model") == "free-local"

    async def answer(self, writer: asyncio.StreamWriter, request: Received) -> None:
        if request.request_line.startswith("GET "):
            writer.write(http_answer(b'{"object": "list", "data": [{"id": "gpt-4o-mini"}]}'))
        elif self.is_open(request) or request.headers.get("authorization") == "Bearer sk-alice":
            writer.write(_completion(next(self.numbers)))
        else:
            error = {"error": {"message": "Incorrect API key provided.", "code": "invalid_api_key"}}
            writer.write(http_answer(orjson.dumps(error), status="401 Unauthorized"))
        await writer.drain()


def _completion(number: int, fingerprint: str = "fp_gateway") -> bytes:
    body = {
        "id": f"chatcmpl-{number}",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"secret answer {number}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    return http_answer(orjson.dumps(body), "Content-Type: application/json")


@pytest.fixture
def gateway() -> Iterator[Scripted]:
    with Scripted(Gateway().answer) as upstream:
        yield upstream


def _post(proxy: Proxy, body: bytes, headers: dict[str, str], query: str = "") -> httpx.Response:
    return httpx.post(
        f"{proxy.v1}/chat/completions{query}",
        content=body,
        headers={"Content-Type": "application/json", **headers},
        timeout=10,
    )


# (what the hostile caller gets served by the upstream, as body, headers and query)
OPEN_REQUESTS = {
    "a free model": (_question("free-local", "hello"), {}, ""),
    "a routing header": (_question("gpt-4o-mini", "hello"), {"x-provider": "local"}, ""),
    "a query parameter": (_question("gpt-4o-mini", "hello"), {}, "?provider=local"),
}


@pytest.mark.parametrize("caller", [MALLORY, {}], ids=["made-up key", "keyless"])
@pytest.mark.parametrize("opened", list(OPEN_REQUESTS), ids=list(OPEN_REQUESTS))
def test_a_request_the_upstream_serves_anyone_opens_no_other_answers_of_the_shared_cache(
    start_proxy: ProxyFactory, gateway: Scripted, caller: dict[str, str], opened: str
) -> None:
    """The upstream serving one request to credentials (or to no credentials at all) says they
    may have that answer, not every answer: its access may depend on the model, a routing
    header or the query. Taken for the whole tenant, a made-up key that got a free model's
    answer read every tenant's stored answers of a paid one, which the upstream refuses it."""
    proxy = start_proxy("--cache-scope", "shared", upstream=gateway.v1)
    body, headers, query = OPEN_REQUESTS[opened]
    served = _post(proxy, body, {**caller, **headers}, query)  # first: what it learns stands
    assert served.status_code == 200
    secret = _post(proxy, _question("gpt-4o-mini"), ALICE)
    assert (secret.status_code, secret.headers["X-Repro-Cache"]) == (200, "MISS")
    for _ in range(2):
        refused = _post(proxy, _question("gpt-4o-mini"), caller)
        assert refused.status_code == 401, refused.headers.get("X-Repro-Cache")
        assert b"secret answer" not in refused.content
    again = _post(proxy, body, {**caller, **headers}, query)  # what it was served, it reads
    assert (again.headers["X-Repro-Cache"], again.content) == ("HIT", served.content)


async def _paid_by_header(writer: asyncio.StreamWriter, request: Received) -> None:
    """A gateway serving anyone from its default provider, and from its paid one (named by a
    routing header) only `sk-alice`; its model list is public."""
    if request.request_line.startswith("GET "):
        writer.write(http_answer(b'{"object": "list", "data": [{"id": "gpt-4o-mini"}]}'))
    elif (
        request.headers.get("x-provider") != "paid"
        or request.headers.get("authorization") == "Bearer sk-alice"
    ):
        writer.write(_completion(len(request.body)))
    else:
        writer.write(http_answer(b'{"error": {"message": "no"}}', status="401 Unauthorized"))
    await writer.drain()


def test_a_made_up_key_is_tried_with_the_routing_headers_of_its_request(
    start_proxy: ProxyFactory,
) -> None:
    """Whether the upstream serves made-up credentials is asked with the request's keyed
    headers: asked without them, a gateway open on its default provider vouched for a made-up
    key on the paid provider a header names, and it read what alice stored there."""
    with Scripted(_paid_by_header) as upstream:
        proxy = start_proxy("--cache-scope", "shared", upstream=upstream.v1)
        paid = {"x-provider": "paid"}
        secret = _post(proxy, _question("gpt-4o-mini"), {**ALICE, **paid})
        assert (secret.status_code, secret.headers["X-Repro-Cache"]) == (200, "MISS")
        refused = _post(proxy, _question("gpt-4o-mini"), {**MALLORY, **paid})
        assert refused.status_code == 401, refused.headers.get("X-Repro-Cache")
        tried = [
            r
            for r in upstream.received
            if r.request_line.startswith("POST") and "sk-repro-" in r.headers["authorization"]
        ]
        assert tried and all(r.headers.get("x-provider") == "paid" for r in tried)


async def _fleet_by_header(writer: asyncio.StreamWriter, request: Received) -> None:
    """An upstream answering a model from another fleet (another fingerprint) when a routing
    header names another provider, as gateways do."""
    if request.request_line.startswith("GET "):
        writer.write(http_answer(b'{"object": "list", "data": [{"id": "gpt-4o-mini"}]}'))
    else:
        routed = request.headers.get("x-provider") == "other"
        writer.write(_completion(len(request.body), "fp_other" if routed else "fp_main"))
    await writer.drain()


def test_a_tenant_routed_to_another_fleet_does_not_turn_other_tenants_hits_into_misses(
    start_proxy: ProxyFactory,
) -> None:
    """Under `follow`, an answer teaches its model's current fingerprint. One tenant whose own
    requests a routing header sends to another fleet (another fingerprint) makes every other
    tenant's stored answers of that model stale, one request per flip, in `key` scope too."""
    with Scripted(_fleet_by_header) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        stored = _post(proxy, _question("gpt-4o-mini"), ALICE)
        assert stored.headers["X-Repro-Fingerprint"] == "fp_main"
        routed = {**MALLORY, "x-provider": "other"}
        own = _post(proxy, _question("gpt-4o-mini", "anything"), routed)
        assert own.headers["X-Repro-Fingerprint"] == "fp_other"
        again = _post(proxy, _question("gpt-4o-mini"), ALICE)
        assert (again.headers["X-Repro-Cache"], again.content) == ("HIT", stored.content)
