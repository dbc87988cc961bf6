"""In `shared` scope the key check asks an upstream whose model list answers anyone whether it
also answers made-up credentials of the caller's shape (the names of its credential headers),
once per shape and interval. A caller inventing a header name per request made every request
a new shape: two more upstream calls each, one of them its whole body with made-up
credentials. A real proxy, a gateway written here that answers everyone, raw httpx."""

from __future__ import annotations

import asyncio

import httpx

from proxy.server.keycheck import MAX_LEARNING
from tests.fixtures_procs import ProxyFactory
from tests.hostile import Received, Scripted, completion, http_answer


async def open_gateway(writer: asyncio.StreamWriter, received: Received) -> None:
    if received.request_line.startswith("GET /v1/models"):
        listed = b'{"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]}'
        writer.write(http_answer(listed, "Content-Type: application/json"))
    else:
        writer.write(http_answer(completion("hi"), "Content-Type: application/json"))
    await writer.drain()


def test_invented_credential_names_ask_the_upstream_within_a_budget(
    start_proxy: ProxyFactory,
) -> None:
    with Scripted(open_gateway) as upstream:
        proxy = start_proxy("--cache-scope", "shared", upstream=upstream.v1)
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(base_url=proxy.v1, timeout=10) as http:
            assert (
                http.post(
                    "/chat/completions", json=body, headers={"Authorization": "Bearer sk-a"}
                ).status_code
                == 200
            )
            sent = MAX_LEARNING + 60
            for number in range(sent):
                headers = {"Authorization": "Bearer sk-a", f"x-v{number}-token": "t"}
                assert http.post("/chat/completions", json=body, headers=headers).status_code == 200
        made_up = [r for r in upstream.received if "sk-repro-" in str(r.headers)]
    assert len(made_up) <= MAX_LEARNING, len(made_up)  # before: two for each of the 316
    # each request: its own key's check and itself; the made-up asks within the budget
    assert len(upstream.received) <= 2 * (sent + 1) + MAX_LEARNING
