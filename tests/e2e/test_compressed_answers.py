"""Compressed answers from the upstream that do not end where their format says: a gzip stream
cut before its trailer (the length declared covers only the bytes sent, or the chunked body
ends cleanly), a deflate stream without its last block. aiohttp's client inflates what is there
and reports a whole answer; unless the end is checked, the proxy serves the prefix as the
answer, and stores it. And the user's side: a whole compressed answer, to the SDK, is stored."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import httpx
import pytest
from openai import OpenAI

from tests.e2e.test_e2e_errors import AUTH
from tests.e2e.test_upstream_attacks import chat
from tests.fixtures_procs import CHUNKED_END, ProxyFactory, raw_exchange
from tests.hostile import STREAM, Received, Scripted, completion, sse_frames

ANSWER = completion("inflated, but cut short")


def cut(coding: str, body: bytes) -> bytes:
    """`body` compressed, flushed so that all of it inflates, without the stream's end."""
    wbits = 31 if coding == "gzip" else 15
    packer = zlib.compressobj(wbits=wbits)
    return packer.compress(body) + packer.flush(zlib.Z_SYNC_FLUSH)


def whole(coding: str, body: bytes) -> bytes:
    return gzip.compress(body) if coding == "gzip" else zlib.compress(body)


def framed(body: bytes, content_type: str, coding: str, chunked: bool) -> bytes:
    """An answer with a Content-Length covering exactly `body`, or chunked and ended cleanly:
    the HTTP framing is whole, only the compressed stream inside it is cut."""
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Encoding: {coding}\r\n"
    if not chunked:
        return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body
    pieces = [body[: len(body) // 2], body[len(body) // 2 :]]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return head.encode() + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


def answering(data: bytes) -> Scripted:
    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(data)
        await writer.drain()

    return Scripted(write)


CASES = [
    pytest.param(coding, chunked, id=f"{coding}-{'chunked' if chunked else 'length'}")
    for coding in ("gzip", "deflate")
    for chunked in (False, True)
]


@pytest.mark.parametrize(("coding", "chunked"), CASES)
def test_a_cut_compressed_answer_is_a_502_and_is_never_stored(
    start_proxy: ProxyFactory, coding: str, chunked: bool
) -> None:
    body = cut(coding, ANSWER)
    assert zlib.decompressobj(wbits=47).decompress(body) == ANSWER  # the prefix is all of it
    with answering(framed(body, "application/json", coding, chunked)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        answers = [
            httpx.post(proxy.v1 + "/chat/completions", content=chat("c"), headers=AUTH)
            for _ in range(2)
        ]
    for answer in answers:
        assert answer.status_code == 502, answer.text
        error = answer.json()["error"]
        assert error["code"] == "upstream_unreachable"
        assert "cut short" in error["message"]
    assert len(upstream.received) == 2  # nothing was stored to answer the second


@pytest.mark.parametrize(("coding", "chunked"), CASES)
def test_a_cut_compressed_stream_is_relayed_without_its_clean_end_and_never_stored(
    start_proxy: ProxyFactory, coding: str, chunked: bool
) -> None:
    """Every frame, `[DONE]` too, inflates from what came; the stream still lacks its end."""
    frames = sse_frames("a stream cut before its trailer")
    body = cut(coding, frames)
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        b"Authorization: Bearer sk-alice\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(STREAM) + STREAM
    )
    with answering(framed(body, "text/event-stream", coding, chunked)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        answers = [raw_exchange(proxy.port, request, until=CHUNKED_END) for _ in range(2)]
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
        assert b"data: [DONE]" in answer  # relayed as it came
        # but the connection closed without the chunked body's end
        assert not answer.endswith(CHUNKED_END)
        assert b"\r\nX-Repro-Cache: MISS\r\n" in answer  # the first was not stored
    assert len(upstream.received) == 2


@pytest.mark.parametrize(("coding", "chunked"), CASES)
def test_a_whole_compressed_answer_reaches_the_sdk_and_is_stored(
    start_proxy: ProxyFactory, coding: str, chunked: bool
) -> None:
    answer = framed(whole(coding, ANSWER), "application/json", coding, chunked)
    with answering(answer) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        with OpenAI(base_url=proxy.v1, api_key="sk-alice", max_retries=0) as sdk:
            asked = [
                sdk.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "c"}]
                )
                for _ in range(2)
            ]
    assert [a.headers["X-Repro-Cache"] for a in asked] == ["MISS", "HIT"]
    assert [a.parse().choices[0].message.content for a in asked] == ["inflated, but cut short"] * 2
    assert len(upstream.received) == 1


@pytest.mark.parametrize(("coding", "chunked"), CASES)
def test_a_whole_compressed_stream_reaches_the_sdk_and_is_stored(
    start_proxy: ProxyFactory, coding: str, chunked: bool
) -> None:
    frames = sse_frames("a whole stream")
    answer = framed(whole(coding, frames), "text/event-stream", coding, chunked)
    with answering(answer) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        with OpenAI(base_url=proxy.v1, api_key="sk-alice", max_retries=0) as sdk:
            texts, outcomes = [], []
            for _ in range(2):
                with sdk.chat.completions.with_streaming_response.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
                ) as response:
                    outcomes.append(response.headers["X-Repro-Cache"])
                    parts = [c.choices[0].delta.content or "" for c in response.parse()]
                    texts.append("".join(parts))
    assert outcomes == ["MISS", "HIT"]
    assert texts == ["a whole stream"] * 2
    assert len(upstream.received) == 1
