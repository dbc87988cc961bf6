"""Streams recorded at once share one budget (real processes): an upstream sending tens of MiB
down many streams at once, and holding them open, took the proxy's memory to their sum, each
stream's recording bounded by --max-entry, their number by nothing."""

from __future__ import annotations

import asyncio
import threading

import httpx
import orjson

from proxy.core.budget import HELD_AT_ONCE
from tests.fixtures_procs import ProxyFactory
from tests.hostile import Received, Scripted

MIB = 1 << 20
STREAM_MIB = 30
STREAMS = HELD_AT_ONCE // (STREAM_MIB * MIB) * 2  # twice what the budget holds
PADDING = b": " + b"x" * (MIB - 4) + b"\n\n"  # a comment event of one MiB


def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    frame = {
        "id": "chatcmpl-big",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_big",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(frame) + b"\n\n"


def holding(all_sent: threading.Event) -> Scripted:
    """Each stream sends its first token and 30 MiB of comments, then waits until every
    stream has, before it ends cleanly."""
    sent = 0

    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        nonlocal sent
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        )
        writer.write(chunk({"role": "assistant", "content": "big"}))
        for _ in range(STREAM_MIB):
            writer.write(PADDING)
            await writer.drain()
        sent += 1
        if sent == STREAMS:
            all_sent.set()
        await asyncio.to_thread(all_sent.wait, 60)
        writer.write(chunk({}, "stop") + b"data: [DONE]\n\n")
        await writer.drain()
        writer.close()

    return Scripted(write)


async def ask_all(url: str) -> list[int]:
    async def ask(client: httpx.AsyncClient, n: int) -> int:
        question = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{n}"}]}
        received = 0
        async with client.stream("POST", url, json={**question, "stream": True}) as answer:
            assert answer.status_code == 200
            async for data in answer.aiter_raw():
                received += len(data)
        return received

    async with httpx.AsyncClient(timeout=120, headers={"Authorization": "Bearer sk-a"}) as c:
        return await asyncio.gather(*(ask(c, n) for n in range(STREAMS)))


def test_streams_recorded_at_once_hold_no_more_than_the_budget(
    start_proxy: ProxyFactory,
) -> None:
    all_sent = threading.Event()
    with holding(all_sent) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        url = proxy.url + "/v1/chat/completions"
        received = asyncio.run(ask_all(url))
        assert all_sent.is_set()
        assert all(size > STREAM_MIB * MIB for size in received)  # every client, whole
        stored = 0
        for n in range(STREAMS):
            question = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{n}"}]}
            again = httpx.post(
                url,
                json={**question, "stream": True},
                headers={"Authorization": "Bearer sk-a", "Cache-Control": "only-if-cached"},
                timeout=60,
            )
            stored += again.status_code == 200
    # Those that would have taken the recordings past the budget were relayed, not stored.
    assert 1 <= stored <= HELD_AT_ONCE // (STREAM_MIB * MIB)
