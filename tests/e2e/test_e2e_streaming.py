"""Streamed answers end to end: the official SDK (sync and async) -> proxy -> `repro-proxy sim`.

The proxies are real `python -m proxy serve` processes, started once for the module and side by
side (one per configuration); each test works in its own namespace, and tests that read metrics
use a model name of their own, so they do not see each other's entries or counters. The last
section checks the stream recorder (proxy/core/sse.py) alone, on bytes split in awkward places.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState

from bench.procs import wait_until
from proxy.core.sse import StreamRecorder
from tests.fixtures_procs import (
    Proxy,
    ProxyFactory,
    Sim,
    closed_after_test,
)

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Stream something reproducible."}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            },
        },
    }
]
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "usage": {"stream_options": {"include_usage": True}},
    "tools": {"tools": TOOLS, "tool_choice": "required"},
}
# The shared proxies, by name: the `proxies` fixture of tests/e2e/conftest.py starts them.
CONFIGS = {
    "default": (),
    "cancel": ("--stream-disconnect", "cancel"),
    "small": ("--max-entry", "200"),
    "replay": ("--cache-mode", "replay"),
}
WAIT = 5.0


# --- processes -------------------------------------------------------------------------------


@pytest.fixture
def proxy(proxies: dict[str, Proxy], sim: Sim) -> Proxy:
    return proxies["default"]


# --- helpers ---------------------------------------------------------------------------------


def sync_client(proxy: Proxy, ns: str) -> OpenAI:
    client = OpenAI(
        base_url=proxy.v1,
        api_key="sk-stream",
        max_retries=0,
        timeout=10,
        default_headers={"X-Repro-Namespace": ns},
    )
    return closed_after_test(client)


def async_client(proxy: Proxy, ns: str) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=proxy.v1,
        api_key="sk-stream",
        max_retries=0,
        timeout=10,
        default_headers={"X-Repro-Namespace": ns},
    )


def params(**overrides: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES, **overrides}


def raw_body(**overrides: Any) -> bytes:
    return orjson.dumps(params(stream=True, **overrides))


def post(proxy: Proxy, ns: str, body: bytes, **headers: str) -> httpx.Response:
    """One request read to the end, through plain httpx."""
    sent = {
        "Authorization": "Bearer sk-stream",
        "Content-Type": "application/json",
        "X-Repro-Namespace": ns,
        **headers,
    }
    return httpx.post(proxy.v1 + "/chat/completions", content=body, headers=sent, timeout=10)


def stored(proxy: Proxy, ns: str, body: bytes) -> bool:
    """Whether the proxy holds an answer for `body`, asked without reaching the upstream."""
    response = post(proxy, ns, body, **{"Cache-Control": "only-if-cached"})
    if response.status_code == 504:
        assert response.json()["error"]["code"] == "cache_miss"
        return False
    assert response.status_code == 200, response.text
    assert response.headers["X-Repro-Cache"] == "HIT"
    return True


def assemble(chunks: list[Any], tools: Any = None) -> dict[str, Any]:
    """The message the SDK's own stream helper builds from these chunks."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState(
        input_tools=tools or openai.omit
    )
    for chunk in chunks:
        state.handle_chunk(chunk)
    completion = state.get_final_completion()
    return completion.choices[0].message.to_dict()


Streamed = tuple[httpx.Headers, list[Any]]


def stream_sync(client: OpenAI, **overrides: Any) -> Streamed:
    raw = client.chat.completions.with_raw_response.create(stream=True, **params(**overrides))
    return raw.headers, list(raw.parse())


async def stream_async(client: AsyncOpenAI, **overrides: Any) -> Streamed:
    async with client.chat.completions.with_streaming_response.create(
        stream=True, **params(**overrides)
    ) as response:
        stream = await response.parse()
        return response.headers, [chunk async for chunk in stream]


def assert_miss_then_hit(sim: Sim, variant: str, miss: Streamed, hit: Streamed) -> None:
    (miss_headers, miss_chunks), (hit_headers, hit_chunks) = miss, hit
    assert miss_headers["X-Repro-Cache"] == "MISS"
    assert hit_headers["X-Repro-Cache"] == "HIT"
    assert hit_headers["X-Repro-Key"] == miss_headers["X-Repro-Key"]
    assert (
        miss_headers["X-Repro-Fingerprint"] == hit_headers["X-Repro-Fingerprint"] == ("fp_sim_0001")
    )
    assert miss_headers["Content-Type"].startswith("text/event-stream")
    assert hit_headers["Content-Type"].startswith("text/event-stream")
    assert "Age" not in miss_headers
    assert int(hit_headers["Age"]) in (0, 1)
    assert [c.to_dict() for c in hit_chunks] == [c.to_dict() for c in miss_chunks]
    tools = VARIANTS[variant].get("tools")
    message = assemble(miss_chunks, tools)
    assert assemble(hit_chunks, tools) == message
    assert len(sim.llm_requests()) == 1
    if variant == "plain":
        assert message["content"].endswith(".")
        assert all(c.usage is None for c in miss_chunks)
    if variant == "usage":
        usage = [c.usage for c in miss_chunks if c.usage is not None]
        assert len(usage) == 1 and usage[0].completion_tokens > 0
        assert miss_chunks[-1].choices == [] and hit_chunks[-1].usage == usage[0]
    if variant == "tools":
        (call,) = message["tool_calls"]
        assert call["function"]["name"] == "get_weather"
        assert set(orjson.loads(call["function"]["arguments"])) == {"city", "days"}
        assert miss_chunks[-1].choices[0].finish_reason == "tool_calls"


# --- MISS then HIT ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_sync_stream_miss_then_hit_replays_the_same_chunks(
    proxy: Proxy, sim: Sim, ns: str, variant: str
) -> None:
    client = sync_client(proxy, ns)
    miss = stream_sync(client, **VARIANTS[variant])
    hit = stream_sync(client, **VARIANTS[variant])
    assert_miss_then_hit(sim, variant, miss, hit)


@pytest.mark.parametrize("variant", VARIANTS)
async def test_async_stream_miss_then_hit_replays_the_same_chunks(
    proxy: Proxy, sim: Sim, ns: str, variant: str
) -> None:
    async with async_client(proxy, ns) as client:
        miss = await stream_async(client, **VARIANTS[variant])
        hit = await stream_async(client, **VARIANTS[variant])
    assert_miss_then_hit(sim, variant, miss, hit)


async def test_async_stream_helper_builds_the_same_tool_call(
    proxy: Proxy, sim: Sim, ns: str
) -> None:
    finals = []
    async with async_client(proxy, ns) as client:
        for _ in range(2):
            async with client.chat.completions.stream(
                **params(tools=TOOLS, tool_choice="required")
            ) as stream:
                finals.append((await stream.get_final_completion()).to_dict())
    assert finals[0] == finals[1]
    call = finals[0]["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert len(sim.llm_requests()) == 1


def test_text_completion_stream_is_replayed(proxy: Proxy, sim: Sim, ns: str) -> None:
    client = sync_client(proxy, ns)
    runs = []
    for _ in range(2):
        raw = client.completions.with_raw_response.create(
            model="gpt-3.5-turbo-instruct", prompt="Once", stream=True
        )
        runs.append((raw.headers["X-Repro-Cache"], [c.to_dict() for c in raw.parse()]))
    assert [outcome for outcome, _ in runs] == ["MISS", "HIT"]
    assert runs[0][1] == runs[1][1]
    assert runs[0][1][-1]["choices"][0]["finish_reason"] == "stop"
    assert len(sim.llm_requests()) == 1


# --- bytes and key ---------------------------------------------------------------------------


def test_hit_replays_the_miss_bytes_exactly(proxy: Proxy, sim: Sim, ns: str) -> None:
    body = raw_body(stream_options={"include_usage": True})
    bodies, outcomes = [], []
    headers = {"Authorization": "Bearer sk-stream", "X-Repro-Namespace": ns}
    with httpx.Client(base_url=proxy.v1, headers=headers, timeout=10) as client:
        for _ in range(2):
            with client.stream("POST", "/chat/completions", content=body) as response:
                assert response.status_code == 200
                assert response.headers["Content-Type"].startswith("text/event-stream")
                outcomes.append(response.headers["X-Repro-Cache"])
                bodies.append(b"".join(response.iter_raw()))
    assert outcomes == ["MISS", "HIT"]
    assert bodies[1] == bodies[0]
    assert bodies[0].startswith(b"data: {") and bodies[0].endswith(b"data: [DONE]\n\n")
    assert len(sim.llm_requests()) == 1


def test_stream_is_part_of_the_key(proxy: Proxy, sim: Sim, ns: str) -> None:
    client = sync_client(proxy, ns)
    plain = client.chat.completions.with_raw_response.create(**params())
    streamed, _ = stream_sync(client)
    assert plain.headers["X-Repro-Cache"] == streamed["X-Repro-Cache"] == "MISS"
    assert plain.headers["X-Repro-Key"] != streamed["X-Repro-Key"]
    assert plain.headers["Content-Type"].startswith("application/json")
    assert len(sim.llm_requests()) == 2


# --- failures store nothing ------------------------------------------------------------------


def test_cut_stream_breaks_for_the_client_and_stores_nothing(
    proxy: Proxy, sim: Sim, ns: str
) -> None:
    sim.fault(kind="cut", after=3)
    seen = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in sync_client(proxy, ns).chat.completions.create(stream=True, **params()):
            seen.append(chunk)
    assert len(seen) == 3
    assert_nothing_stored_then_normal_request_stores(proxy, ns)


def test_stream_cut_before_its_first_event_is_a_502(proxy: Proxy, sim: Sim, ns: str) -> None:
    sim.fault(kind="cut", after=0)
    with pytest.raises(openai.APIStatusError) as caught:
        sync_client(proxy, ns).chat.completions.create(stream=True, **params())
    assert caught.value.status_code == 502
    assert caught.value.response.json()["error"]["code"] == "upstream_unreachable"
    assert_nothing_stored_then_normal_request_stores(proxy, ns)


def test_error_event_reaches_the_client_and_stores_nothing(proxy: Proxy, sim: Sim, ns: str) -> None:
    sim.fault(kind="error_event", after=2)
    with pytest.raises(openai.APIError, match="error while streaming"):
        for _ in sync_client(proxy, ns).chat.completions.create(stream=True, **params()):
            pass
    assert_nothing_stored_then_normal_request_stores(proxy, ns)


def test_upstream_status_error_passes_through_and_stores_nothing(
    proxy: Proxy, sim: Sim, ns: str
) -> None:
    sim.fault(kind="status", status=500, headers={"Retry-After": "7"})
    with pytest.raises(openai.InternalServerError) as caught:
        sync_client(proxy, ns).chat.completions.create(stream=True, **params())
    assert caught.value.status_code == 500
    assert caught.value.response.headers["Retry-After"] == "7"
    assert caught.value.response.headers["X-Repro-Cache"] == "MISS"
    assert_nothing_stored_then_normal_request_stores(proxy, ns)


def assert_nothing_stored_then_normal_request_stores(proxy: Proxy, ns: str) -> None:
    assert not stored(proxy, ns, raw_body())
    headers, chunks = stream_sync(sync_client(proxy, ns))
    assert headers["X-Repro-Cache"] == "MISS"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert stored(proxy, ns, raw_body())


def test_stream_over_the_size_cap_is_served_whole_and_not_stored(
    proxies: dict[str, Proxy], sim: Sim, ns: str
) -> None:
    small = proxies["small"]
    response = post(small, ns, raw_body())
    assert response.status_code == 200
    assert response.headers["X-Repro-Cache"] == "MISS"
    assert response.headers["X-Repro-Fingerprint"] == "fp_sim_0001"
    assert len(response.content) > 200
    assert response.content.endswith(b"data: [DONE]\n\n")
    direct = httpx.post(
        sim.v1 + "/chat/completions",
        content=sim.llm_requests()[0]["body"].encode(),
        headers={"Authorization": "Bearer sk-stream", "Content-Type": "application/json"},
    )
    assert _choices(response.content) == _choices(direct.content)
    assert not stored(small, ns, raw_body())
    assert post(small, ns, raw_body()).headers["X-Repro-Cache"] == "MISS"


def _choices(sse: bytes) -> list[Any]:
    """The choices of each frame: what a client reads, without the per-answer id and time."""
    frames = [f[len(b"data: ") :] for f in sse.split(b"\n\n") if f]
    return [orjson.loads(f)["choices"] for f in frames if f != b"[DONE]"]


# --- client disconnects ----------------------------------------------------------------------


def read_two_chunks_and_leave(proxy: Proxy, ns: str) -> None:
    stream = sync_client(proxy, ns).chat.completions.create(stream=True, **params(max_tokens=60))
    next(stream), next(stream)
    stream.close()


def test_client_disconnect_finishes_the_upstream_stream_and_stores_it(
    proxy: Proxy, sim: Sim, ns: str
) -> None:
    sim.settings(chunk_delay=0.05)
    completed = sim.stats()["streams_completed"]
    read_two_chunks_and_leave(proxy, ns)
    assert sim.stats()["streams_completed"] == completed  # still streaming when the client left
    wait_until(
        lambda: sim.stats()["streams_completed"] == completed + 1, "the stream to finish", WAIT
    )
    wait_until(lambda: stored(proxy, ns, raw_body(max_tokens=60)), "the stream to be stored", WAIT)
    headers, chunks = stream_sync(sync_client(proxy, ns), max_tokens=60)
    assert headers["X-Repro-Cache"] == "HIT"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len(sim.llm_requests()) == 1


def test_client_disconnect_with_cancel_cancels_the_upstream_and_stores_nothing(
    proxies: dict[str, Proxy], sim: Sim, ns: str
) -> None:
    proxy = proxies["cancel"]
    sim.settings(chunk_delay=0.05)
    before = sim.stats()
    read_two_chunks_and_leave(proxy, ns)
    wait_until(
        lambda: sim.stats()["streams_cancelled"] == before["streams_cancelled"] + 1,
        "the upstream stream to be cancelled",
        WAIT,
    )
    assert sim.stats()["streams_completed"] == before["streams_completed"]
    sim.settings(chunk_delay=0.0)
    assert not stored(proxy, ns, raw_body(max_tokens=60))
    headers, _ = stream_sync(sync_client(proxy, ns), max_tokens=60)
    assert headers["X-Repro-Cache"] == "MISS"
    assert len(sim.llm_requests()) == 2


def test_identical_stream_arriving_mid_stream_gets_its_first_chunk_at_once(
    proxy: Proxy, sim: Sim, ns: str
) -> None:
    """A second identical stream must not wait for the first to end (no coalescing on TTFB)."""
    sim.settings(chunk_delay=0.05)
    completed = sim.stats()["streams_completed"]
    client = sync_client(proxy, ns)
    first = client.chat.completions.create(stream=True, **params(max_tokens=60))
    next(first)
    second = client.chat.completions.create(stream=True, **params(max_tokens=60))
    next(second)
    assert sim.stats()["streams_completed"] == completed  # the first is still streaming
    assert list(first)[-1].choices[0].finish_reason == "stop"
    assert list(second)[-1].choices[0].finish_reason == "stop"


# --- headers, directives, modes, namespaces --------------------------------------------------


def test_repro_headers_come_before_the_first_byte(proxy: Proxy, sim: Sim, ns: str) -> None:
    sim.settings(chunk_delay=0.2)
    headers = {"Authorization": "Bearer sk-stream", "X-Repro-Namespace": ns}
    with (
        httpx.Client(base_url=proxy.v1, headers=headers, timeout=10) as client,
        client.stream("POST", "/chat/completions", content=raw_body()) as response,
    ):
        got = response.headers
        assert got["X-Repro-Cache"] == "MISS"
        assert got["X-Repro-Fingerprint"] == "fp_sim_0001"
        assert (got["X-Repro-Seed"], got["X-Repro-Seed-Source"]) == ("12345", "default")
        assert len(got["X-Repro-Key"]) == 64
        first = next(response.iter_raw())
        assert first.startswith(b"data: {")
        assert b"[DONE]" not in first  # headers and first frame came well before the end
    sim.settings(chunk_delay=0.0)  # the proxy reads on after we left; let it end and store
    wait_until(lambda: stored(proxy, ns, raw_body()), "the abandoned stream to be stored", WAIT)


def test_a_streamed_miss_sends_its_head_with_the_first_frame(
    proxy: Proxy, sim: Sim, ns: str
) -> None:
    """One write, not two: the client's first token then costs it one wakeup. The sim waits
    between frames, so a head sent on its own would arrive alone."""
    sim.settings(chunk_delay=0.2)
    body = raw_body()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer sk-stream\r\nX-Repro-Namespace: {ns}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as conn:
        conn.sendall(head.encode() + body)
        first = conn.recv(65536)
    status, _, rest = first.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200") and b"X-Repro-Cache: MISS" in status
    assert b"data: {" in rest and b"[DONE]" not in rest
    sim.settings(chunk_delay=0.0)
    wait_until(lambda: stored(proxy, ns, body), "the abandoned stream to be stored", WAIT)


def test_cache_control_directives_apply_to_streams(proxy: Proxy, sim: Sim, ns: str) -> None:
    client = sync_client(proxy, ns)
    no_store = {"extra_headers": {"Cache-Control": "no-store"}}
    bypass, _ = stream_sync(client, **no_store)
    assert bypass["X-Repro-Cache"] == "BYPASS"
    assert not stored(proxy, ns, raw_body())
    miss, miss_chunks = stream_sync(client)
    assert miss["X-Repro-Cache"] == "MISS"
    only = {"extra_headers": {"Cache-Control": "only-if-cached"}}
    hit, hit_chunks = stream_sync(client, **only)
    assert hit["X-Repro-Cache"] == "HIT"
    assert [c.to_dict() for c in hit_chunks] == [c.to_dict() for c in miss_chunks]
    refresh, _ = stream_sync(client, extra_headers={"Cache-Control": "no-cache"})
    assert refresh["X-Repro-Cache"] == "REFRESH"
    assert (
        stream_sync(client, extra_headers={"Cache-Control": "max-age=3600"})[0]["X-Repro-Cache"]
        == "HIT"
    )
    assert len(sim.llm_requests()) == 3


def test_namespaces_partition_streams(proxy: Proxy, sim: Sim, ns: str) -> None:
    first, _ = stream_sync(sync_client(proxy, ns))
    other, _ = stream_sync(sync_client(proxy, ns + "-other"))
    again, _ = stream_sync(sync_client(proxy, ns))
    assert (first["X-Repro-Cache"], other["X-Repro-Cache"], again["X-Repro-Cache"]) == (
        "MISS",
        "MISS",
        "HIT",
    )
    assert other["X-Repro-Key"] != first["X-Repro-Key"] == again["X-Repro-Key"]
    assert len(sim.llm_requests()) == 2


def test_replay_mode_with_an_empty_store_answers_cache_miss_for_streams(
    proxies: dict[str, Proxy], sim: Sim, ns: str
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        sync_client(proxies["replay"], ns).chat.completions.create(stream=True, **params())
    assert caught.value.status_code == 504
    assert caught.value.response.json()["error"]["code"] == "cache_miss"
    assert sim.llm_requests() == []


# --- fingerprints and metrics ----------------------------------------------------------------


def test_fingerprint_rotation_is_learned_from_streams(proxy: Proxy, sim: Sim, ns: str) -> None:
    model = "fp-model-" + ns
    client = sync_client(proxy, ns)
    first, _ = stream_sync(client, model=model)
    assert first["X-Repro-Fingerprint"] == "fp_sim_0001"
    sim.set_fingerprint("fp_sim_0002")
    other = [{"role": "user", "content": "Another question."}]
    rotated, _ = stream_sync(client, model=model, messages=other)
    assert (rotated["X-Repro-Cache"], rotated["X-Repro-Fingerprint"]) == ("MISS", "fp_sim_0002")
    assert proxy.metric("repro_fingerprint_changes_total", model=model) == 1
    assert proxy.metric("repro_fingerprint_info", model=model, fingerprint="fp_sim_0002") == 1
    # follow: the stream stored under the old fingerprint is no longer served
    again, _ = stream_sync(client, model=model)
    assert (again["X-Repro-Cache"], again["X-Repro-Fingerprint"]) == ("MISS", "fp_sim_0002")
    assert len(sim.llm_requests()) == 3


def test_tokens_saved_come_from_the_usage_chunk(proxy: Proxy, sim: Sim, ns: str) -> None:
    model = "usage-model-" + ns
    client = sync_client(proxy, ns)
    usage_option = {"stream_options": {"include_usage": True}}
    _, chunks = stream_sync(client, model=model, **usage_option)
    usage = chunks[-1].usage
    assert usage is not None
    assert proxy.metric("repro_tokens_saved_total", model=model, type="completion") == 0
    hit, _ = stream_sync(client, model=model, **usage_option)
    assert hit["X-Repro-Cache"] == "HIT"
    saved = {
        kind: proxy.metric("repro_tokens_saved_total", model=model, type=kind)
        for kind in ("prompt", "completion")
    }
    assert saved == {"prompt": usage.prompt_tokens, "completion": usage.completion_tokens}
    assert proxy.metric("repro_cache_hits_total", model=model) == 1


# --- the recorder alone (no processes) -------------------------------------------------------


def _sse(*events: Any) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


CLEAN = _sse(
    {"system_fingerprint": "fp_a", "choices": [{"delta": {"content": "Hi"}}]},
    {"system_fingerprint": "fp_a", "choices": [{"delta": {}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
)


@pytest.mark.parametrize("size", [1, 7, len(CLEAN)])
def test_recorder_reads_frames_split_anywhere(size: int) -> None:
    recorder = StreamRecorder(1024)
    for i in range(0, len(CLEAN), size):
        recorder.feed(CLEAN[i : i + size].replace(b"\n", b"\r\n"))
    assert recorder.complete and recorder.fingerprint == "fp_a"
    assert (recorder.prompt_tokens, recorder.completion_tokens) == (3, 1)
    assert recorder.body() == CLEAN.replace(b"\n", b"\r\n")


@pytest.mark.parametrize(
    "stream",
    [
        CLEAN[: -len(b"data: [DONE]\n\n")],
        _sse({"choices": [{"delta": {"content": "Hi"}, "finish_reason": None}]}),
        CLEAN.replace(b"data: [DONE]", b'data: {"error": {"message": "x"}}\n\ndata: [DONE]'),
    ],
    ids=["no-done", "no-finish-reason", "error-event"],
)
def test_recorder_refuses_streams_that_did_not_end_cleanly(stream: bytes) -> None:
    recorder = StreamRecorder(1024)
    recorder.feed(stream)
    assert not recorder.complete


def test_recorder_over_the_cap_keeps_no_bytes_but_learns_the_fingerprint() -> None:
    recorder = StreamRecorder(40)
    recorder.feed(CLEAN)
    assert recorder.oversize and not recorder.complete
    assert recorder.body() == b""
    assert recorder.fingerprint == "fp_a" and recorder.frames == 4


def test_recorder_stops_reading_a_frame_larger_than_it_can_hold() -> None:
    recorder = StreamRecorder(10)
    recorder.feed(b"data: " + b"x" * (2 * 1024 * 1024))
    assert not recorder.reading and recorder.oversize
    recorder.feed(CLEAN)
    assert recorder.fingerprint is None and recorder.frames == 0


# --- headers of a streamed answer --------------------------------------------------------------

_SSE_WITH_COOKIES = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Set-Cookie: a=1\r\n"
    b"Set-Cookie: b=2\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
_SSE_FRAMES = [
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","system_fingerprint":"fp_x",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"hi"},"finish_reason":null}]}'
    b"\n\n",
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","system_fingerprint":"fp_x",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]


class _CookieUpstream(socketserver.StreamRequestHandler):
    """Answers any request with a short stream that sets two cookies."""

    def handle(self) -> None:
        head = self.rfile.readline()
        length = 0
        for _ in range(100):
            line = self.rfile.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        self.rfile.read(length)
        assert head.startswith(b"POST ")
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(f), f) for f in _SSE_FRAMES)
        self.wfile.write(_SSE_WITH_COOKIES + chunks + b"0\r\n\r\n")


def test_a_streamed_answer_keeps_repeated_upstream_headers(start_proxy: ProxyFactory) -> None:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _CookieUpstream) as upstream:
        upstream.daemon_threads = True
        threading.Thread(target=upstream.serve_forever, daemon=True).start()
        try:
            proxy = start_proxy(upstream=f"http://127.0.0.1:{upstream.server_address[1]}/v1")
            body = {"model": "m", "messages": MESSAGES, "stream": True}
            with httpx.stream(
                "POST",
                proxy.v1 + "/chat/completions",
                json=body,
                headers={"Authorization": "Bearer sk-cookie"},
                timeout=10,
            ) as response:
                streamed = response.read()
            assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
            assert response.headers["X-Repro-Cache"] == "MISS"
            assert streamed == b"".join(_SSE_FRAMES)
        finally:
            upstream.shutdown()
