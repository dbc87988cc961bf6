"""Attacks through a streamed answer, against a real proxy process: a hostile upstream that
never ends its stream, or answers a stream request in some other shape (tests/hostile.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import httpx
import orjson
import pytest
from openai import OpenAI

from bench.procs import cpu_seconds, peak_rss_kib
from tests.fixtures_procs import ProxyFactory
from tests.hostile import Received, Scripted, Writer, dripping_json, http_answer

AUTH = {"Authorization": "Bearer sk-victim", "Content-Type": "application/json"}
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
WAIT = 20.0


def stream_request(content: str) -> bytes:
    return orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": content}], "stream": True}
    )


def streaming(
    v1: str, content: str, timeout: float = WAIT
) -> AbstractContextManager[httpx.Response]:
    """A stream request to the proxy whose API root is `v1`, its answer read as it comes."""
    return httpx.stream(
        "POST",
        v1 + "/chat/completions",
        content=stream_request(content),
        headers=AUTH,
        timeout=timeout,
    )


def asked(v1: str, content: str) -> httpx.Response:
    """A stream request to the proxy whose API root is `v1`, its answer read whole."""
    return httpx.post(
        v1 + "/chat/completions", content=stream_request(content), headers=AUTH, timeout=WAIT
    )


def frame(content: str) -> bytes:
    event = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "system_fingerprint": "fp_hostile",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class Endless:
    """An upstream whose stream never ends and never goes silent: a frame every `gap` seconds,
    `limit` at most (so the test stays bounded), until the proxy closes the connection."""

    padding: int = 0
    gap: float = 0.02
    limit: int = 3000
    sent: int = 0
    closed: threading.Event = field(default_factory=threading.Event)

    async def __call__(self, writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(SSE_HEAD)
        try:
            for number in range(self.limit):
                writer.write(chunked(frame(f"{number} " + "x" * self.padding)))
                await writer.drain()
                self.sent += 1
                await asyncio.sleep(self.gap)
        except ConnectionError:
            self.closed.set()
            raise


def read_first_frame_and_leave(port: int, content: str) -> None:
    with streaming(f"http://127.0.0.1:{port}/v1", content, timeout=10) as response:
        assert response.status_code == 200
        next(response.iter_raw())


def test_a_left_stream_over_the_cap_is_not_read_on(start_proxy: ProxyFactory) -> None:
    endless = Endless(padding=1000)
    with Scripted(endless) as upstream:
        proxy = start_proxy("--max-entry", "64KiB", upstream=upstream.v1)
        read_first_frame_and_leave(proxy.port, "over the cap")
        assert endless.closed.wait(WAIT), "the proxy still reads a stream it can never store"
    assert endless.sent < 200


def test_a_left_stream_is_read_on_for_at_most_the_upstream_timeout(
    start_proxy: ProxyFactory,
) -> None:
    endless = Endless()
    with Scripted(endless) as upstream:
        proxy = start_proxy("--upstream-timeout", "2", upstream=upstream.v1)
        read_first_frame_and_leave(proxy.port, "never ends")
        assert endless.closed.wait(WAIT), "the proxy still reads a stream nobody reads"
    assert endless.sent < endless.limit


def test_a_whole_answer_to_a_stream_request_is_bounded_by_the_upstream_timeout(
    start_proxy: ProxyFactory,
) -> None:
    """A stream request's connection waits only on silences; an answer that turns out to be
    JSON (or an error status) is read whole, so one deadline bounds all of it."""
    dripped = threading.Event()
    with Scripted(dripping_json(300, 0.1, dripped)) as upstream:
        proxy = start_proxy("--upstream-timeout", "1", upstream=upstream.v1)
        answer = asked(proxy.v1, "drip")
        assert not dripped.is_set()
    assert (answer.status_code, answer.json()["error"]["code"]) == (504, "upstream_timeout")


def test_a_frame_sent_in_many_pieces_costs_its_length_once(start_proxy: ProxyFactory) -> None:
    """A frame that never ends, up to the recorder's bound (--max-entry), in 16 KiB pieces
    that arrive one by one: split again whole at each piece, its cost grew with the square of
    its length, a minute of the proxy's CPU for the 32 MiB the default cap lets through."""
    piece = b"x" * (16 * 1024)

    async def one_long_line(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(SSE_HEAD + chunked(frame("first")) + chunked(b"data: "))
        for _ in range(8 * 64):
            writer.write(chunked(piece))
            await writer.drain()
            await asyncio.sleep(0.01)  # one read per piece, as over a network
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    with Scripted(one_long_line) as upstream:
        proxy = start_proxy("--max-entry", "8MiB", upstream=upstream.v1)
        before = cpu_seconds(proxy.proc.pid)
        deadline = time.monotonic() + 30
        size = 0
        with streaming(proxy.v1, "long line", timeout=10) as response:
            for part in response.iter_raw():
                size += len(part)
                if time.monotonic() > deadline:
                    break
        used = cpu_seconds(proxy.proc.pid) - before
    assert size == len(frame("first")) + len(b"data: ") + 8 * 1024 * 1024
    assert used < 1  # split again at each piece: 3.6 s here, 16 times that at the default cap


AZURE_CHAT = "/openai/deployments/dep/chat/completions?api-version=2024-10-21"


def asked_twice(
    start_proxy: ProxyFactory, parts: tuple[bytes, ...], prompt: str, route: str = ""
) -> tuple[list[httpx.Response], Scripted]:
    """The same stream request twice, to an upstream streaming these frames each time; on
    /v1/chat/completions, or on an Azure `route` (the upstream then the resource's root)."""

    async def streams(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(SSE_HEAD + b"".join(chunked(part) for part in parts) + b"0\r\n\r\n")
        await writer.drain()

    with Scripted(streams) as upstream:
        root = upstream.v1.removesuffix("/v1") if route else upstream.v1
        proxy = start_proxy(upstream=root)
        url = proxy.url + route if route else proxy.v1 + "/chat/completions"
        answers = [
            httpx.post(url, content=stream_request(prompt), headers=AUTH, timeout=WAIT)
            for _ in range(2)
        ]
    return answers, upstream


def test_a_stream_carrying_an_error_event_is_never_stored(start_proxy: ProxyFactory) -> None:
    """An `event: error` frame whose data reads as a token: a client dispatching on the event
    name saw an error, yet the stream ends with a finish_reason and `[DONE]`. Stored, every
    later caller would get that error replayed as a clean answer; it is asked for again."""
    error = b'event: error\ndata: {"message": "overloaded", "choices": []}\n\n'
    finish = frame("!").replace(b'"finish_reason":null', b'"finish_reason":"stop"')
    parts = (frame("a"), error, finish, b"data: [DONE]\n\n")
    answers, upstream = asked_twice(start_proxy, parts, "errs")
    assert [a.headers["x-repro-cache"] for a in answers] == ["MISS", "MISS"]
    assert all(b"event: error" in a.content for a in answers)
    assert len(upstream.received) == 2


def test_a_stream_whose_fingerprint_changes_midway_is_never_stored(
    start_proxy: ProxyFactory,
) -> None:
    """Its first chunks name one fingerprint, the rest another: stored, it would be served as
    the first fingerprint's answer though another produced part of it."""
    other = frame("!").replace(b'"finish_reason":null', b'"finish_reason":"stop"')
    other = other.replace(b"fp_hostile", b"fp_other")
    answers, upstream = asked_twice(
        start_proxy, (frame("a"), other, b"data: [DONE]\n\n"), "changes"
    )
    assert [a.headers["x-repro-cache"] for a in answers] == ["MISS", "MISS"]
    assert [a.headers["x-repro-fingerprint"] for a in answers] == ["fp_hostile"] * 2
    assert len(upstream.received) == 2


@pytest.mark.parametrize("first", [b"", frame("first")], ids=["first-frame", "after-a-frame"])
def test_a_frame_that_never_ends_holds_no_more_than_the_cap(
    start_proxy: ProxyFactory, first: bytes
) -> None:
    """One `data:` line three times --max-entry long, never ended by a blank line: the
    recording, the frame being read and the bytes held for the response head each kept their
    own copy of it, about three times the cap at once. Now the proxy's peak memory rises by
    about the cap, and every byte still reaches the client as it comes."""
    cap_mib, pieces, piece = 16, 3 * 16 * 16, b"x" * (64 * 1024)

    async def one_endless_frame(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(SSE_HEAD + (chunked(first) if first else b"") + chunked(b"data: "))
        for _ in range(pieces):
            writer.write(chunked(piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    with Scripted(one_endless_frame) as upstream:
        proxy = start_proxy("--max-entry", f"{cap_mib}MiB", upstream=upstream.v1)
        httpx.get(proxy.url + "/metrics", timeout=5)
        before = peak_rss_kib(proxy.proc.pid)
        size = 0
        with streaming(proxy.v1, "endless") as response:
            outcome = response.headers["x-repro-cache"]
            for part in response.iter_raw():
                size += len(part)
        rise = (peak_rss_kib(proxy.proc.pid) - before) / 1024
    assert outcome == "MISS"
    assert size == len(first) + len(b"data: ") + pieces * len(piece)
    assert rise < 1.5 * cap_mib, f"peak RSS rose {rise:.0f} MiB for a {cap_mib} MiB cap"


def test_a_long_stream_under_the_cap_is_still_stored(start_proxy: ProxyFactory) -> None:
    """The user's side of the bound: a stream of about three quarters of --max-entry, one long
    frame among many short ones, arriving in small pieces, is relayed to the SDK and stored."""
    words = [f"{n} " for n in range(600)]
    long = "z" * (512 * 1024)
    finish = frame("!").replace(b'"finish_reason":null', b'"finish_reason":"stop"')
    body = b"".join(frame(w) for w in [*words, long]) + finish + b"data: [DONE]\n\n"
    assert 512 * 1024 < len(body) < 1024 * 1024

    async def in_pieces(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(SSE_HEAD)
        for at in range(0, len(body), 4096):
            writer.write(chunked(body[at : at + 4096]))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    with Scripted(in_pieces) as upstream:
        proxy = start_proxy("--max-entry", "1MiB", upstream=upstream.v1)
        with OpenAI(base_url=proxy.v1, api_key="sk-victim", max_retries=0) as sdk:
            texts, outcomes = [], []
            for _ in range(2):
                with sdk.chat.completions.with_streaming_response.create(
                    model="m", messages=[{"role": "user", "content": "long"}], stream=True
                ) as response:
                    outcomes.append(response.headers["X-Repro-Cache"])
                    texts.append(
                        "".join(c.choices[0].delta.content or "" for c in response.parse())
                    )
    assert outcomes == ["MISS", "HIT"]
    assert texts == ["".join(words) + long + "!"] * 2
    assert len(upstream.received) == 1


def finish_frame(fingerprint: str = "fp_hostile") -> bytes:
    return (
        frame("!")
        .replace(b'"finish_reason":null', b'"finish_reason":"stop"')
        .replace(b"fp_hostile", fingerprint.encode())
    )


def gated(
    first: bytes,
    rest: bytes,
    gate: threading.Event,
    opened: list[bool] | None = None,
    head: bytes = SSE_HEAD,
    cut: bool = False,
) -> Writer:
    """Stream `first`, wait (bounded) until the test opens `gate`, then stream `rest`, and end
    the stream, or with `cut` break the connection instead; `opened` says whether the gate
    opened before the wait ran out."""

    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(head + chunked(first))
        await writer.drain()
        for _ in range(int(WAIT / 0.01)):
            if gate.is_set():
                break
            await asyncio.sleep(0.01)
        if opened is not None:
            opened.append(gate.is_set())
        writer.write(chunked(rest) + (b"" if cut else b"0\r\n\r\n"))
        await writer.drain()
        if cut:
            writer.close()

    return write


def test_a_stream_ended_by_cr_alone_reaches_the_client_as_it_comes_and_is_replayed(
    start_proxy: ProxyFactory,
) -> None:
    """CR alone ends a line, as the SSE specification and the SDK read it. The proxy found no
    frame in such a stream: it held the client's head and every byte back until the upstream
    ended, and never stored it."""
    first = frame("a").replace(b"\n", b"\r")
    rest = (finish_frame() + b"data: [DONE]\n\n").replace(b"\n", b"\r")
    gate, opened = threading.Event(), []
    with Scripted(gated(first, rest, gate, opened)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        with OpenAI(base_url=proxy.v1, api_key="sk-victim", max_retries=0, timeout=WAIT) as sdk:
            runs = []
            for _ in range(2):
                with sdk.chat.completions.with_streaming_response.create(
                    model="m", messages=[{"role": "user", "content": "cr"}], stream=True
                ) as response:
                    gate.set()  # the head came before the upstream's end
                    chunks = [c.to_dict() for c in response.parse()]
                    runs.append((response.headers["X-Repro-Cache"], chunks))
                    fingerprint = response.headers["X-Repro-Fingerprint"]
    assert opened == [True]
    assert [outcome for outcome, _ in runs] == ["MISS", "HIT"]
    assert runs[0][1] == runs[1][1] and len(runs[0][1]) == 2
    assert fingerprint == "fp_hostile"
    assert len(upstream.received) == 1


HIDDEN_ERROR = b': ok\rdata: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'


@pytest.mark.parametrize(
    ("spoiler", "route"),
    [
        (HIDDEN_ERROR, ""),
        (b"retry: 3000\n\n", ""),
        (b"data:\n\n", ""),
        (HIDDEN_ERROR, AZURE_CHAT),
    ],
    ids=["error-behind-a-cr", "retry-alone", "empty-data", "azure-error-behind-a-cr"],
)
def test_a_stream_the_sdk_fails_on_is_never_stored(
    start_proxy: ProxyFactory, spoiler: bytes, route: str
) -> None:
    """A frame the recorder read as nothing, while the SDK reads an error (a `data:` line after
    a comment ended by CR) or an event it cannot parse: the stream was stored, and every later
    caller got the failure replayed from the cache."""
    parts = (frame("a"), spoiler, finish_frame(), b"data: [DONE]\n\n")
    answers, upstream = asked_twice(start_proxy, parts, "spoiled", route)
    assert [a.headers["x-repro-cache"] for a in answers] == ["MISS", "MISS"]
    assert all(spoiler in a.content for a in answers)
    asked = [r.request_line for r in upstream.received if r.request_line.startswith("POST")]
    assert len(asked) == 2
    assert all(line.startswith("POST " + (route[:24] or "/v1/chat")) for line in asked)


def test_a_stream_of_comments_past_the_cap_gets_its_head_without_waiting_for_an_event(
    start_proxy: ProxyFactory,
) -> None:
    """Comments (`: ping`) and no event: the proxy held every chunk back, waiting for a first
    frame to name the fingerprint, without bound in memory and with the client waiting for
    its head. Past --max-entry the stream cannot be stored anyway: the head goes."""
    pings = b": ping\n\n" * (256 * 1024 // 8)
    rest = frame("a") + finish_frame() + b"data: [DONE]\n\n"
    gate, opened = threading.Event(), []
    with Scripted(gated(pings, rest, gate, opened)) as upstream:
        proxy = start_proxy("--max-entry", "64KiB", upstream=upstream.v1)
        with streaming(proxy.v1, "pings", timeout=2 * WAIT) as response:
            gate.set()
            head = (response.status_code, response.headers["x-repro-cache"])
            body = response.read()
    assert opened == [True]
    assert head == (200, "MISS")
    assert body == pings + rest


def test_a_stream_carrying_an_error_teaches_no_fingerprint(start_proxy: ProxyFactory) -> None:
    """A stream whose chunks name a new fingerprint, then report an error: the proxy learned
    the new fingerprint from it, so under `follow` the model's stored answers (all of the old
    one) were no longer served. An error answer never teaches one; a stream that is one
    neither."""
    error = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
    clean = SSE_HEAD + b"".join(
        chunked(p) for p in (frame("a"), finish_frame(), b"data: [DONE]\n\n")
    )
    spoiled = SSE_HEAD + chunked(frame("b").replace(b"fp_hostile", b"fp_other") + error)

    async def answer(writer: asyncio.StreamWriter, request: Received) -> None:
        writer.write((spoiled if b"errs" in request.body else clean) + b"0\r\n\r\n")
        await writer.drain()

    with Scripted(answer) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        outcomes = [
            asked(proxy.v1, prompt).headers["x-repro-cache"] for prompt in ("kept", "errs", "kept")
        ]
        changes = proxy.metric("repro_fingerprint_changes_total", model="m")
    assert outcomes == ["MISS", "MISS", "HIT"]
    assert changes == 0


def test_a_responses_stream_whose_fingerprint_changes_midway_is_never_stored(
    start_proxy: ProxyFactory,
) -> None:
    def typed(kind: str, **fields: object) -> bytes:
        event = orjson.dumps({"type": kind, **fields})
        return b"event: " + kind.encode() + b"\ndata: " + event + b"\n\n"

    response = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}
    completed = {**response, "status": "completed", "system_fingerprint": "fp_other"}
    parts = (
        typed("response.created", response={**response, "system_fingerprint": "fp_one"}),
        typed("response.completed", response=completed),
    )

    async def streams(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(SSE_HEAD + b"".join(chunked(part) for part in parts) + b"0\r\n\r\n")
        await writer.drain()

    body = orjson.dumps({"model": "m", "input": "changes", "stream": True})
    with Scripted(streams) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        answers = [
            httpx.post(proxy.v1 + "/responses", content=body, headers=AUTH, timeout=WAIT)
            for _ in range(2)
        ]
    assert [a.headers["x-repro-cache"] for a in answers] == ["MISS", "MISS"]
    assert [a.headers["x-repro-fingerprint"] for a in answers] == ["fp_one"] * 2
    assert len(upstream.received) == 2


def typed(kind: str, **fields: object) -> bytes:
    event = orjson.dumps({"type": kind, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + event + b"\n\n"


RESPONSE = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}
CLEAN_TYPED = typed("response.created", response=RESPONSE) + typed(
    "response.completed", response={**RESPONSE, "status": "completed"}
)


@pytest.mark.parametrize("cut", [False, True], ids=["ended", "cut"])
def test_what_follows_a_stored_clean_end_never_reaches_the_first_client(
    start_proxy: ProxyFactory, cut: bool
) -> None:
    """A Responses stream completes, and is stored; then the upstream sends an `error` event
    and (or) breaks the connection. The SDK reads a Responses stream to its end: the first
    client got the error, or an APIConnectionError, after `response.completed`, and every
    later one the clean answer stored. The first now gets what the stored answer holds."""
    junk = typed("error", message="late", code="server_error")
    gate = threading.Event()
    body = orjson.dumps({"model": "m", "input": "late junk", "stream": True})
    with Scripted(gated(CLEAN_TYPED, junk, gate, cut=cut)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        seen: list[tuple[str, bytes]] = []
        for _ in range(2):
            with httpx.stream(
                "POST", proxy.v1 + "/responses", content=body, headers=AUTH, timeout=WAIT
            ) as response:
                got = b""
                for part in response.iter_raw():
                    got += part
                    if b"response.completed" in got:
                        gate.set()
                seen.append((response.headers["x-repro-cache"], got))
        with OpenAI(base_url=proxy.v1, api_key="sk-victim", max_retries=0) as sdk:
            events = [
                e.type for e in sdk.responses.create(model="m", input="late junk", stream=True)
            ]
    assert [outcome for outcome, _ in seen] == ["MISS", "HIT"]
    assert seen[0][1] == seen[1][1] == CLEAN_TYPED
    assert events == ["response.created", "response.completed"]
    assert len([r for r in upstream.received if r.request_line.startswith("POST")]) == 1


def test_a_first_chunk_naming_no_fingerprint_does_not_name_the_answer(
    start_proxy: ProxyFactory,
) -> None:
    """Azure opens a stream with a chunk of prompt filter results: no choice, no
    system_fingerprint. The head went with it, so the first client read `none` in
    X-Repro-Fingerprint, and every later one the fingerprint the answer is stored under. The
    head now waits for the first chunk that names a fingerprint or carries a choice, which
    costs the client nothing: its first token is in that chunk."""
    filters = b'data: {"choices":[],"id":"","model":"","prompt_filter_results":[]}\n\n'
    parts = (filters, frame("a"), finish_frame(), b"data: [DONE]\n\n")
    answers, _ = asked_twice(start_proxy, parts, "filtered", AZURE_CHAT)
    assert [a.headers["x-repro-cache"] for a in answers] == ["MISS", "HIT"]
    assert [a.headers["x-repro-fingerprint"] for a in answers] == ["fp_hostile"] * 2
    assert answers[0].content == answers[1].content == b"".join(parts)


def test_a_stream_in_a_coding_the_proxy_does_not_decode_is_not_read(
    start_proxy: ProxyFactory,
) -> None:
    """A stream in `br`, which the proxy never asks for, is passed on as sent and never stored.
    Its bytes were still read as SSE: its head waited for a frame that compressed bytes
    never hold (up to --max-entry of them, or the stream's end), and bytes that did read as a
    frame named the answer's fingerprint, and taught it to the model."""
    head = SSE_HEAD.replace(b"Transfer-Encoding", b"Content-Encoding: br\r\nTransfer-Encoding")
    first, rest = frame("a"), finish_frame() + b"data: [DONE]\n\n"
    gate, opened = threading.Event(), []
    with Scripted(gated(first[:20], first[20:] + rest, gate, opened, head)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        with streaming(proxy.v1, "brotli", timeout=2 * WAIT) as response:
            gate.set()
            got = (response.headers["content-encoding"], response.headers["x-repro-fingerprint"])
            body = b"".join(response.iter_raw())
        learned = proxy.metric("repro_fingerprint_info", model="m", fingerprint="fp_hostile")
    assert opened == [True]
    assert got == ("br", "none")
    assert body == first + rest
    assert learned == 0


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain"], ids=["json", "plain-text"]
)
def test_a_stream_request_answered_in_another_shape_is_passed_on_and_never_stored(
    start_proxy: ProxyFactory, content_type: str
) -> None:
    """A whole completion (or SSE bytes labelled otherwise) answering a stream request: stored
    under the stream's key, it would replay to clients whose SDK expects events; its
    fingerprint is not learned either, as no stream's is until it was read."""
    whole = orjson.dumps(
        {
            "object": "chat.completion",
            "system_fingerprint": "fp_whole",
            "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
        }
    )
    body = whole if content_type == "application/json" else frame("a") + b"data: [DONE]\n\n"

    async def answer(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(http_answer(body, f"Content-Type: {content_type}"))
        await writer.drain()

    with Scripted(answer) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        answers = [asked(proxy.v1, "shape") for _ in range(2)]
        learned = [
            s.labels for s in proxy.samples() if s.name == "repro_fingerprint_info" and s.value
        ]
    assert [(a.status_code, a.headers["x-repro-cache"]) for a in answers] == [(200, "MISS")] * 2
    assert all(a.content == body for a in answers)
    assert all(a.headers["content-type"].startswith(content_type) for a in answers)
    assert learned == []
