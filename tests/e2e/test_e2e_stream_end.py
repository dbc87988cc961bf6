"""End to end: a stream ends where the upstream said it ends. Frames it sends after `[DONE]`
(chat) or `response.completed` (Responses), even in the same read, reach neither the client nor
the stored entry, and a HIT replays the first client's bytes exactly. And an upstream sending
megabytes of tiny frames at once does not hold the proxy's other clients.

The upstream is tests/hostile.py's Scripted, writing each answer in one write; the proxy a real
process; the client raw aiohttp, which sees every byte the SDK would skip past `[DONE]`."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import orjson
import pytest
from openai import OpenAI

from tests.fixtures_procs import Proxy, closed_after_test, running_proxy
from tests.hostile import Received, Scripted

AUTH = {"Authorization": "Bearer sk-end", "Content-Type": "application/json"}
WAIT = 30.0


def chunk(content: str, finish: str | None = None, index: int = 0) -> bytes:
    event = {
        "id": "chatcmpl-end",
        "object": "chat.completion.chunk",
        "model": "m",
        "system_fingerprint": "fp_end",
        "choices": [{"index": index, "delta": {"content": content}, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


def typed(event: dict[str, object]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (str(event["type"]).encode(), orjson.dumps(event))


CHAT_ANSWER = chunk("hel") + chunk("lo", "stop") + b"data: [DONE]\n\n"
CRLF_ANSWER = CHAT_ANSWER.replace(b"\n\n", b"\r\n\r\n")
RESPONSE = {
    "id": "resp_end",
    "object": "response",
    "status": "completed",
    "model": "m",
    "output": [
        {
            "type": "message",
            "id": "msg_end",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "hello", "annotations": []}],
        }
    ],
    "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
}
DELTA = {
    "type": "response.output_text.delta",
    "item_id": "msg_end",
    "output_index": 0,
    "content_index": 0,
    "delta": "hello",
}
RESPONSES_ANSWER = (
    typed({"type": "response.created", "response": {**RESPONSE, "status": "in_progress"}})
    + typed(DELTA)
    + typed({"type": "response.completed", "response": RESPONSE})
)
AFTER_DONE = {
    "not-a-chunk": b'data: {"extra": 1}\n\n',
    "another-chunk": chunk(" and more"),
    "another-choice": chunk("more", index=1),
    "error-event": b'event: error\ndata: {"error": {"message": "late"}}\n\n',
    "second-done": b"data: [DONE]\n\n",
    "comment-then-chunk": b": ping\n\n" + chunk("x"),
}
AFTER_COMPLETED = {
    "error-event": typed({"type": "error", "code": "server_error", "message": "late"}),
    "another-delta": typed({**DELTA, "delta": " and more"}),
    "failed": typed({"type": "response.failed", "response": {**RESPONSE, "status": "failed"}}),
}


@dataclass
class Script:
    """What the upstream answers to one prompt: its body in one write, gzip'd if asked, the
    second part (if any) in a write of its own once the first is drained."""

    body: bytes
    later: bytes = b""
    gzipped: bool = False
    sent: threading.Event | None = None


SCRIPTS: dict[str, Script] = {}
SSE = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


async def answer(writer: asyncio.StreamWriter, request: Received) -> None:
    asked = orjson.loads(request.body)
    prompt = asked["input"] if "input" in asked else asked["messages"][0]["content"]
    script = SCRIPTS[prompt]
    if script.gzipped:
        body = gzip.compress(script.body)
        writer.write(f"{SSE}Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        writer.write(body)
    else:
        writer.write(f"{SSE}Transfer-Encoding: chunked\r\n\r\n".encode())
        writer.write(b"%x\r\n%s\r\n" % (len(script.body), script.body))
        if script.later:
            await writer.drain()
            await asyncio.sleep(0.2)  # a read of its own, most likely (the test holds either way)
            writer.write(b"%x\r\n%s\r\n" % (len(script.later), script.later))
        writer.write(b"0\r\n\r\n")
    await writer.drain()
    if script.sent is not None:
        script.sent.set()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Scripted]:
    with Scripted(answer) as scripted:
        yield scripted


@pytest.fixture(scope="module")
def proxy(upstream: Scripted) -> Iterator[Proxy]:
    with running_proxy(upstream.v1) as started:
        yield started


@dataclass
class Read:
    cache: str
    body: bytes


async def read(proxy: Proxy, prompt: str, responses: bool = False) -> Read:
    """One stream request, its answer read to the end as raw bytes."""
    if responses:
        path, asked = "/responses", {"model": "m", "input": prompt, "stream": True}
    else:
        path = "/chat/completions"
        asked = {"model": "m", "messages": [{"role": "user", "content": prompt}], "stream": True}
    timeout = aiohttp.ClientTimeout(total=WAIT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(proxy.v1 + path, data=orjson.dumps(asked), headers=AUTH) as response,
    ):
        assert response.status == 200
        return Read(response.headers["X-Repro-Cache"], await response.read())


def asked_upstream(upstream: Scripted, prompt: str) -> int:
    return sum(prompt.encode() in request.body for request in upstream.received)


async def assert_ends_at_its_end(
    proxy: Proxy, upstream: Scripted, prompt: str, answer: bytes, responses: bool = False
) -> None:
    """The first client gets `answer`, to its end and nothing more; so does the next, a HIT."""
    first = await read(proxy, prompt, responses)
    second = await read(proxy, prompt, responses)
    assert first.body == answer
    assert (first.cache, second.cache) == ("MISS", "HIT")
    assert second.body == first.body
    assert asked_upstream(upstream, prompt) == 1


@pytest.mark.parametrize("extra", AFTER_DONE)
async def test_frames_after_done_in_the_same_read_reach_no_one(
    proxy: Proxy, upstream: Scripted, extra: str
) -> None:
    prompt = f"after done: {extra}"
    SCRIPTS[prompt] = Script(CHAT_ANSWER + AFTER_DONE[extra])
    await assert_ends_at_its_end(proxy, upstream, prompt, CHAT_ANSWER)


async def test_frames_after_a_crlf_done_in_the_same_read_reach_no_one(
    proxy: Proxy, upstream: Scripted
) -> None:
    SCRIPTS["after a crlf done"] = Script(CRLF_ANSWER + b"data: [DONE]\r\n\r\n")
    await assert_ends_at_its_end(proxy, upstream, "after a crlf done", CRLF_ANSWER)


async def test_frames_after_done_in_a_later_read_reach_no_one(
    proxy: Proxy, upstream: Scripted
) -> None:
    SCRIPTS["after done, later"] = Script(CHAT_ANSWER, later=AFTER_DONE["another-chunk"])
    await assert_ends_at_its_end(proxy, upstream, "after done, later", CHAT_ANSWER)


@pytest.mark.parametrize("extra", AFTER_COMPLETED)
async def test_events_after_response_completed_in_the_same_read_reach_no_one(
    proxy: Proxy, upstream: Scripted, extra: str
) -> None:
    prompt = f"after completed: {extra}"
    SCRIPTS[prompt] = Script(RESPONSES_ANSWER + AFTER_COMPLETED[extra])
    await assert_ends_at_its_end(proxy, upstream, prompt, RESPONSES_ANSWER, responses=True)


async def test_a_compressed_stream_going_on_past_its_end_is_cut_there_and_stored(
    proxy: Proxy, upstream: Scripted
) -> None:
    """What follows the answer's clean end is never read, its compressed stream's own end
    neither: the answer ended, and is stored, as a plain stream's is (a compressed stream that
    broke before its answer's end never is: see tests/e2e/test_compressed_answers.py)."""
    prompt = "compressed, after done"
    SCRIPTS[prompt] = Script(CHAT_ANSWER + AFTER_DONE["not-a-chunk"], gzipped=True)
    await assert_ends_at_its_end(proxy, upstream, prompt, CHAT_ANSWER)


def test_the_sdk_reads_the_answer_and_its_hit_alike(proxy: Proxy, upstream: Scripted) -> None:
    prompt = "sdk, after done"
    SCRIPTS[prompt] = Script(CHAT_ANSWER + AFTER_DONE["not-a-chunk"])
    client = closed_after_test(OpenAI(base_url=proxy.v1, api_key="sk-end", max_retries=0))
    seen = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": prompt}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        seen.append((raw.headers["X-Repro-Cache"], text))
    assert seen == [("MISS", "hello"), ("HIT", "hello")]


async def test_a_clean_end_keeps_the_upstream_connection(proxy: Proxy, upstream: Scripted) -> None:
    """Cut at its end, a stream that stops there is still read to its last byte: its
    connection goes back to the pool, not closed as one that went on past its end."""
    for prompt in ("pooled 1", "pooled 2"):
        SCRIPTS[prompt] = Script(CHAT_ANSWER)
        assert (await read(proxy, prompt)).body == CHAT_ANSWER
    connections = {r.connection for r in upstream.received if b"pooled" in r.body}
    assert len(connections) == 1


async def test_megabytes_of_tiny_frames_at_once_do_not_hold_other_clients(
    proxy: Proxy, upstream: Scripted
) -> None:
    """16 MiB of comments before the first frame, inflated from a few KiB: all of it reaches
    the recorder at once, and the head waits for it. A /healthz asked once the upstream has
    sent it all is answered before the stream's head: the proxy let its loop run meanwhile.
    (Read at once, it held the loop some 15 s; read in slices, about 2 s.)"""
    prompt = "tiny frames"
    sent = threading.Event()
    SCRIPTS[prompt] = Script(b":\n\n" * ((16 << 20) // 3) + CHAT_ANSWER, gzipped=True, sent=sent)
    timeout = aiohttp.ClientTimeout(total=WAIT)
    asked = {"model": "m", "messages": [{"role": "user", "content": prompt}], "stream": True}
    async with (
        aiohttp.ClientSession(timeout=timeout) as streaming,
        aiohttp.ClientSession(timeout=timeout) as probing,
    ):
        url = proxy.v1 + "/chat/completions"
        head = asyncio.ensure_future(streaming.post(url, data=orjson.dumps(asked), headers=AUTH))
        assert await asyncio.to_thread(sent.wait, WAIT)
        health = asyncio.ensure_future(probing.get(proxy.url + "/healthz"))
        done, _ = await asyncio.wait({head, health}, return_when=asyncio.FIRST_COMPLETED)
        async with await health as probed, await head as response:
            assert probed.status == response.status == 200
            assert (await response.read()).endswith(CHAT_ANSWER)
    assert done == {health}, "the proxy answered no one else while it read the stream"
