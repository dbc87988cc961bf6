"""The fingerprint of a streamed answer, against a real proxy process and a scripted upstream
(tests/hostile.py): the first non-null one its chunks name; a stream naming two is stored under
neither and teaches neither to the model's tracking."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from proxy.core.routes import RESPONSES_LINEAGE
from tests.e2e.test_stream_attacks import (
    AUTH,
    RESPONSE,
    SSE_HEAD,
    WAIT,
    asked,
    asked_twice,
    chunked,
    typed,
)
from tests.fixtures_procs import ProxyFactory
from tests.hostile import Received, Scripted
from tests.unit.test_stream_fingerprints import MISSING, chunk


def stream(first: object, middle: object, last: object) -> tuple[bytes, ...]:
    """A role chunk, a token, a finish, `[DONE]`, each chunk naming its fingerprint."""
    return (
        chunk(first, {"role": "assistant", "content": "", "refusal": None}),
        chunk(middle, {"content": "Hi"}),
        chunk(last, {}, "stop"),
        b"data: [DONE]\n\n",
    )


def by_prompt(streams: dict[str, tuple[bytes, ...]]) -> Scripted:
    """An upstream answering each prompt with its stream."""

    async def answer(writer: asyncio.StreamWriter, request: Received) -> None:
        prompt = orjson.loads(request.body)["messages"][0]["content"]
        parts = streams[prompt]
        writer.write(SSE_HEAD + b"".join(chunked(part) for part in parts) + b"0\r\n\r\n")
        await writer.drain()

    return Scripted(answer)


def test_a_stream_whose_first_chunk_names_a_null_fingerprint_is_stored_under_the_next(
    start_proxy: ProxyFactory,
) -> None:
    """OpenAI opens a stream with a null system_fingerprint at times, the real one in the
    chunks after it. The stream was stored and learned as `none`: the model rotated from fp_x
    to `none`, its answers stored under fp_x were no longer served (`follow`), and its first
    client read `none` in X-Repro-Fingerprint. Now the stream is fp_x's answer, from its head."""
    streams = {"named": stream("fp_x", "fp_x", "fp_x"), "null first": stream(None, "fp_x", "fp_x")}
    with by_prompt(streams) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        answers = [asked(proxy.v1, p) for p in ("named", "null first", "null first", "named")]
        changes = proxy.metric("repro_fingerprint_changes_total", model="m")
        current = proxy.metric("repro_fingerprint_info", model="m", fingerprint="fp_x")
        learned_none = proxy.metric("repro_fingerprint_info", model="m", fingerprint="none")
    got = [(a.headers["x-repro-cache"], a.headers["x-repro-fingerprint"]) for a in answers]
    assert got == [("MISS", "fp_x"), ("MISS", "fp_x"), ("HIT", "fp_x"), ("HIT", "fp_x")]
    assert answers[1].content == answers[2].content == b"".join(streams["null first"])
    assert (changes, current, learned_none) == (0, 1, 0)
    assert len(upstream.received) == 2


@pytest.mark.parametrize(
    "spoiled",
    [
        stream(None, "fp_x", "fp_y"),
        stream("fp_x", None, "fp_y"),
        stream("fp_x", "fp x<script>", "fp_x"),
        stream("fp_x", "f" * 300, "fp_x"),
        stream("fp x", "fp_x", "fp_x"),
    ],
    ids=["null-then-two", "two-around-a-null", "ill-formed-later", "too-long-later", "ill-first"],
)
def test_a_stream_naming_two_fingerprints_is_neither_stored_nor_learned(
    start_proxy: ProxyFactory, spoiled: tuple[bytes, ...]
) -> None:
    """No single backend answered it: stored, it would be served as one fingerprint's answer
    though another produced part of it; learned, its second fingerprint (or an ill-formed
    value, which labels call `none`) would rotate the model and retire its stored answers. It
    is passed on as it came, and asked for again."""
    streams = {"named": stream("fp_x", "fp_x", "fp_x"), "spoiled": spoiled}
    with by_prompt(streams) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        answers = [asked(proxy.v1, p) for p in ("named", "spoiled", "spoiled", "named")]
        changes = proxy.metric("repro_fingerprint_changes_total", model="m")
        learned = [
            s.labels["fingerprint"]
            for s in proxy.samples()
            if s.name == "repro_fingerprint_info" and s.labels.get("model") == "m"
        ]
    assert [a.headers["x-repro-cache"] for a in answers] == ["MISS", "MISS", "MISS", "HIT"]
    assert answers[1].content == answers[2].content == b"".join(spoiled)
    assert (changes, learned) == (0, ["fp_x"])
    assert len(upstream.received) == 3


def test_a_stream_naming_no_fingerprint_is_stored_under_none(start_proxy: ProxyFactory) -> None:
    """The user's side: an upstream that never names one (many compatible servers) has its
    streams stored and served as `none`, their head sent with the first token."""
    parts = stream(None, MISSING, None)
    answers, upstream = asked_twice(start_proxy, parts, "nameless")
    got = [(a.headers["x-repro-cache"], a.headers["x-repro-fingerprint"]) for a in answers]
    assert got == [("MISS", "none"), ("HIT", "none")]
    assert answers[0].content == answers[1].content == b"".join(parts)
    assert len(upstream.received) == 1


def test_a_responses_stream_naming_a_fingerprint_after_a_null_is_stored_under_it(
    start_proxy: ProxyFactory,
) -> None:
    """The same rule for the Responses API's typed events, on the event or its response."""
    parts = (
        typed("response.created", response={**RESPONSE, "system_fingerprint": None}),
        typed("response.output_text.delta", delta="x", system_fingerprint="fp_x"),
        typed(
            "response.completed",
            response={**RESPONSE, "status": "completed", "system_fingerprint": "fp_x"},
        ),
    )

    async def streams(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(SSE_HEAD + b"".join(chunked(part) for part in parts) + b"0\r\n\r\n")
        await writer.drain()

    body = orjson.dumps({"model": "m", "input": "null first", "stream": True})
    with Scripted(streams) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        answers = [
            httpx.post(proxy.v1 + "/responses", content=body, headers=AUTH, timeout=WAIT)
            for _ in range(2)
        ]
        current = proxy.metric(
            "repro_fingerprint_info", model="m" + RESPONSES_LINEAGE, fingerprint="fp_x"
        )
    assert [a.headers["x-repro-cache"] for a in answers] == ["MISS", "HIT"]
    assert answers[1].headers["x-repro-fingerprint"] == "fp_x"
    assert answers[1].content == b"".join(parts)
    assert current == 1
    assert len(upstream.received) == 1
