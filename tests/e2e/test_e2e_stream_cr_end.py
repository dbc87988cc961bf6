"""A stream whose SSE lines end with a lone CR (the specification allows CRLF, LF or CR) ends
for the client as soon as its upstream's body does, as one ending with LF does: not after the
END_GRACE the relay gives an upstream that holds its body open past the answer's clean end.

Checked, not fixed: the recorder sees the blank line `\\r\\r` ends at once
(`sse_wire.last_end`), and waits for a CRLF's LF after the end only while the upstream's body
goes on, which it waits for whatever the line ends. An upstream holding a chunked body open
after `[DONE]` is waited for END_GRACE with every line end alike (see proxy/server/streaming.py)."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest

from proxy.server.streaming import END_GRACE
from tests.fixtures_procs import ProxyFactory
from tests.hostile import STREAM, Received, Scripted

AUTH = {"Authorization": "Bearer sk-a", "Content-Type": "application/json"}
QUICK = 0.5  # well under END_GRACE, generous for a loaded machine
assert QUICK < END_GRACE


def frames(end: bytes) -> list[bytes]:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_cr",
        "choices": [{"index": 0, "delta": {"content": "Hi."}, "finish_reason": "stop"}],
    }
    role = {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    return [b"data: " + orjson.dumps(c) + end for c in (role, chunk)] + [b"data: [DONE]" + end]


def upstream(end: bytes, framing: str) -> Scripted:
    """The frames as one write (`whole`), or each its own write (and chunk, when `chunked`)
    a moment apart, the body then ended at once."""

    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        parts = frames(end)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        if framing == "chunked":
            writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
            parts = [b"%x\r\n%s\r\n" % (len(part), part) for part in parts] + [b"0\r\n\r\n"]
        else:
            writer.write(head + b"Content-Length: %d\r\n\r\n" % sum(map(len, parts)))
        if framing == "whole":
            parts = [b"".join(parts)]
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)

    return Scripted(write)


@pytest.mark.parametrize("framing", ["whole", "length", "chunked"])
@pytest.mark.parametrize("end", [b"\r\r", b"\n\n", b"\r\n\r\n"], ids=["cr", "lf", "crlf"])
def test_a_stream_ends_for_the_client_when_its_upstream_ends(
    start_proxy: ProxyFactory, end: bytes, framing: str
) -> None:
    with upstream(end, framing) as hostile:
        proxy = start_proxy(upstream=hostile.v1)
        url = proxy.v1 + "/chat/completions"
        for expected in ("MISS", "HIT"):
            body, done_at = b"", None
            with (
                httpx.Client(timeout=10) as client,
                client.stream("POST", url, content=STREAM, headers=AUTH) as response,
            ):
                assert response.headers["X-Repro-Cache"] == expected
                for piece in response.iter_bytes():
                    body += piece
                    if done_at is None and b"[DONE]" in body:
                        done_at = time.monotonic()
                ended = time.monotonic()
            assert body == b"".join(frames(end)) and done_at is not None
            assert ended - done_at < QUICK, (expected, ended - done_at)
