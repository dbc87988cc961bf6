"""Attack pass 3, against real proxy processes and hostile upstreams (tests/hostile.py).

A value nested 255 to 1023 levels deep: orjson reads it and cannot write it again. An upstream
answering with one made every request that met it a 500 (a stream's fingerprint, a streamed
response fetched by id)."""

from __future__ import annotations

import asyncio

import httpx
import orjson

from tests.fixtures_procs import ProxyFactory
from tests.hostile import Received, Scripted, http_answer
from tests.unit.test_attack_pass3 import DEEP, deep_response_stream

AUTH = {"Authorization": "Bearer sk-a"}
WAIT = 10.0


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
