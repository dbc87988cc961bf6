"""End to end: what an upstream does after its stream's answer has ended cannot hold the client.

A hostile (or merely odd) upstream sends the answer to its clean end, `[DONE]` or
`response.completed`, and then keeps its connection open: compressed, dripping empty deflate
blocks (bytes that inflate to nothing, as zlib's Z_FULL_FLUSH writes them); plain, silent. The
client's stream must end within a bound well below `--upstream-timeout`, the answer be stored
(the next ask is a HIT with the same bytes), and the held upstream connection be closed, never
pooled. Empty blocks before the end are silence too: they cannot keep a stream open past the
upstream timeout, however often they come.

The upstream is tests/hostile.py's Scripted; the proxy a real process; the clients raw aiohttp
(every byte, and whether the stream ended cleanly) and the openai SDK, whose Responses stream
reads on to the body's end.
"""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest
from openai import OpenAI

from tests.e2e.test_e2e_stream_end import CHAT_ANSWER, RESPONSES_ANSWER, chunk
from tests.fixtures_procs import Proxy, closed_after_test, running_proxy
from tests.hostile import Received, Scripted

AUTH = {"Authorization": "Bearer sk-tail", "Content-Type": "application/json"}
TIMEOUT = 30
"""The proxy's --upstream-timeout: what the old code held a client for (or longer)."""
PROMPT = 5.0
"""Within this the client's stream has ended: well below TIMEOUT."""
PAUSE = 0.2
DRIPS = int(TIMEOUT * 1.5 / PAUSE)
"""The hostile drips for longer than TIMEOUT, then stops: every test is bounded."""
EMPTY_BLOCK = b"\x00\x00\x00\xff\xff"
"""A stored deflate block holding nothing, as zlib's Z_FULL_FLUSH writes it."""
SSE = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
WBITS = {"gzip": 31, "deflate": 15}


@dataclass
class Script:
    """One prompt's answer: `body` in its coding (flushed, so that all of it inflates), then,
    compressed, an empty block every PAUSE seconds; plain, silence. Never the body's end, unless
    it `ends` (the compressed stream's and the body's, at once)."""

    body: bytes
    coding: str | None = None
    ends: bool = False
    closed: threading.Event = field(default_factory=threading.Event)
    """Set when a write failed: the proxy closed the connection."""


SCRIPTS: dict[str, Script] = {}


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def prompt_of(request: Received) -> str:
    asked = orjson.loads(request.body)
    return str(asked["input"] if "input" in asked else asked["messages"][0]["content"])


async def answer(writer: asyncio.StreamWriter, request: Received) -> None:
    script = SCRIPTS[prompt_of(request)]
    head = SSE + (f"Content-Encoding: {script.coding}\r\n" if script.coding else "")
    writer.write(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
    if script.coding is None:
        writer.write(chunked(script.body))
    else:
        packer = zlib.compressobj(wbits=WBITS[script.coding])
        flush = zlib.Z_FINISH if script.ends else zlib.Z_SYNC_FLUSH
        writer.write(chunked(packer.compress(script.body) + packer.flush(flush)))
    if script.ends:
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return
    try:
        await writer.drain()
        for _ in range(DRIPS):
            await asyncio.sleep(PAUSE)
            if script.coding is not None:
                writer.write(chunked(EMPTY_BLOCK))
                await writer.drain()
    except ConnectionError:
        script.closed.set()
        raise


@pytest.fixture(scope="module")
def upstream() -> Iterator[Scripted]:
    with Scripted(answer) as scripted:
        yield scripted


@pytest.fixture(scope="module")
def proxy(upstream: Scripted) -> Iterator[Proxy]:
    with running_proxy(upstream.v1, "--upstream-timeout", str(TIMEOUT)) as started:
        yield started


@dataclass
class Read:
    cache: str
    body: bytes
    seconds: float


async def read(proxy: Proxy, prompt: str) -> Read:
    """One chat stream, read to its end as raw bytes; a stream that ends badly raises."""
    asked = {"model": "m", "messages": [{"role": "user", "content": prompt}], "stream": True}
    started = time.monotonic()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT / 2)) as session,
        session.post(
            proxy.v1 + "/chat/completions", data=orjson.dumps(asked), headers=AUTH
        ) as response,
    ):
        assert response.status == 200
        body = await response.read()
        return Read(response.headers["X-Repro-Cache"], body, time.monotonic() - started)


def asked_upstream(upstream: Scripted, prompt: str) -> list[Received]:
    return [request for request in upstream.received if prompt_of(request) == prompt]


async def assert_pool_sound(proxy: Proxy, upstream: Scripted, held: str) -> None:
    """A new answer after the held one comes whole, on another connection than the held one:
    that one was not handed back to the pool (a request sent on it would wait forever)."""
    prompt = f"after {held}"
    SCRIPTS[prompt] = Script(CHAT_ANSWER, "gzip", ends=True)
    after = await read(proxy, prompt)
    assert after.body == CHAT_ANSWER and after.seconds < PROMPT
    [first] = asked_upstream(upstream, held)
    [then] = asked_upstream(upstream, prompt)
    assert then.connection != first.connection


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_empty_blocks_after_done_neither_hold_the_client_nor_spoil_the_answer(
    proxy: Proxy, upstream: Scripted, coding: str
) -> None:
    """The old relay waited for the compressed stream's end to store and pass on `[DONE]`; each
    empty block reset the upstream timeout, so the client waited for ever."""
    prompt = f"empty blocks after done, {coding}"
    SCRIPTS[prompt] = script = Script(CHAT_ANSWER, coding)
    first = await read(proxy, prompt)
    assert first.seconds < PROMPT, first
    assert (first.cache, first.body) == ("MISS", CHAT_ANSWER)
    assert await asyncio.to_thread(script.closed.wait, PROMPT)  # the proxy hung up on it
    second = await read(proxy, prompt)
    assert (second.cache, second.body) == ("HIT", CHAT_ANSWER)
    assert len(asked_upstream(upstream, prompt)) == 1
    await assert_pool_sound(proxy, upstream, prompt)


async def test_a_plain_stream_held_open_after_done_ends_promptly(
    proxy: Proxy, upstream: Scripted
) -> None:
    """No byte after `[DONE]`, and no end of the body: the old relay waited on the upstream
    (its timeout) before ending the client's stream."""
    prompt = "silence after done"
    SCRIPTS[prompt] = Script(CHAT_ANSWER)
    first = await read(proxy, prompt)
    assert first.seconds < PROMPT, first
    assert (first.cache, first.body) == ("MISS", CHAT_ANSWER)
    second = await read(proxy, prompt)
    assert (second.cache, second.body) == ("HIT", CHAT_ANSWER)
    await assert_pool_sound(proxy, upstream, prompt)


def test_the_sdk_reads_a_responses_stream_dripping_empty_blocks_to_its_end(
    proxy: Proxy, upstream: Scripted
) -> None:
    """The SDK reads a Responses stream to the body's end (it has no `[DONE]`): held there, the
    user's loop over its events never finished."""
    prompt = "empty blocks after completed"
    SCRIPTS[prompt] = script = Script(RESPONSES_ANSWER, "gzip")
    client = closed_after_test(
        OpenAI(base_url=proxy.v1, api_key="sk-tail", max_retries=0, timeout=TIMEOUT / 2)
    )
    seen = []
    for _ in range(2):
        started = time.monotonic()
        raw = client.responses.with_raw_response.create(model="m", input=prompt, stream=True)
        kinds = [event.type for event in raw.parse()]
        seen.append((raw.headers["X-Repro-Cache"], kinds))
        assert time.monotonic() - started < PROMPT
    events = ["response.created", "response.output_text.delta", "response.completed"]
    assert seen == [("MISS", events), ("HIT", events)]
    assert script.closed.wait(PROMPT)
    assert len(asked_upstream(upstream, prompt)) == 1


@pytest.fixture(scope="module")
def impatient(upstream: Scripted) -> Iterator[Proxy]:
    with running_proxy(upstream.v1, "--upstream-timeout", "2") as started:
        yield started


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_empty_blocks_before_the_end_are_silence_for_the_upstream_timeout(
    impatient: Proxy, upstream: Scripted, coding: str
) -> None:
    """A stream that named its answer, then drips empty blocks, is cut when its upstream timeout
    (2 s) has passed without a byte of the answer, as a silent one is: the old one waited as
    long as the blocks came, the client's stream open and nothing to read."""
    prompt = f"empty blocks instead of the answer, {coding}"
    SCRIPTS[prompt] = script = Script(chunk("hel"), coding)
    started = time.monotonic()
    with pytest.raises(aiohttp.ClientPayloadError):
        await read(impatient, prompt)
    assert time.monotonic() - started < 2 + PROMPT
    assert await asyncio.to_thread(script.closed.wait, PROMPT)
    with pytest.raises(aiohttp.ClientPayloadError):
        await read(impatient, prompt)  # nothing was stored: asked again
    assert len(asked_upstream(upstream, prompt)) == 2
