"""What an application does with the official `openai` SDK through the proxy, surface by surface:
the second identical call is a HIT, the answer parses into the SDK's types identically, and a
proxy in replay mode, whose upstream nothing listens on, serves the same objects offline.

One recorder (readwrite) and one replayer (`--cache-mode replay`, a dead upstream) share a Redis
store and a secret, so an answer recorded a moment ago replays at once; every test keeps to a
namespace of its own. The SDK's own transport hook records each `X-Repro-Cache` the proxy
answered, which reaches through the helpers (`.stream`, `.parse`) that hide the raw response.

The sim answers `logprobs` with null, one tool call per choice and prose whatever the
`response_format`: what those features yield is not exercised here, only that they are keyed
and replayed.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import orjson
import pydantic
import pytest
from aiohttp.test_utils import TestClient, TestServer
from openai import AsyncOpenAI, AzureOpenAI, OpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from bench.procs import free_port
from proxy import config
from proxy.server.app import create_app
from tests.fixtures_procs import (
    AZURE_VERSION,
    Proxy,
    ProxyFactory,
    Sim,
    closed_after_test,
    running_proxies,
)
from tests.fixtures_redis import RedisServer

SECRET = "sdk-surfaces-secret-16"
KEY = "sk-app"
MODEL = "gpt-4o-mini"
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name a colour."}]


@dataclass
class Pair:
    recorder: Proxy
    replayer: Proxy


@pytest.fixture(scope="module")
def pair(sim_process: Sim, redis_server: RedisServer) -> Iterator[Pair]:
    store = ("--store", redis_server.url, "--secret", SECRET)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    replaying = {"replayer": (*store, "--cache-mode", "replay")}
    with (
        running_proxies(sim_process.v1, {"recorder": store}) as rec,
        running_proxies(dead, replaying) as rep,
    ):
        yield Pair(rec["recorder"], rep["replayer"])


@pytest.fixture(autouse=True)
def calm_sim(sim: Sim) -> None:
    """Every test starts with the sim reset: no latency, fault or key list left by another."""


class Seen:
    """Every `X-Repro-Cache` the proxy answered a client with, in order."""

    def __init__(self) -> None:
        self.caches: list[str] = []

    def hook(self, response: Any) -> None:
        self.caches.append(response.headers.get("X-Repro-Cache", "-"))

    async def ahook(self, response: Any) -> None:
        self.hook(response)

    def take(self) -> list[str]:
        taken, self.caches = self.caches, []
        return taken


def sdk(proxy: Proxy, ns: str, seen: Seen, **options: Any) -> OpenAI:
    transport = openai.DefaultHttpxClient(event_hooks={"response": [seen.hook]})
    options.setdefault("max_retries", 0)
    made = OpenAI(
        base_url=proxy.v1,
        api_key=KEY,
        default_headers={"X-Repro-Namespace": ns},
        http_client=transport,
        **options,
    )
    return closed_after_test(made)


def dump(value: Any) -> Any:
    """The SDK's objects as plain data, compared across calls."""
    if isinstance(value, list):
        return [dump(v) for v in value]
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    return value


Surface = Callable[[OpenAI], Any]


def recorded_then_replayed(pair: Pair, ns: str, surface: Surface, calls: int = 1) -> Any:
    """Run `surface` twice against the recorder and once offline; each run makes `calls`
    requests. The first is all MISS, the others all HIT, and the three parse alike."""
    return replayed_as(pair, ns, surface, ["MISS"] * calls)


def replayed_as(pair: Pair, ns: str, surface: Surface, first_seen: list[str]) -> Any:
    """As `recorded_then_replayed`, for a surface whose requests the recorder first answers
    with `first_seen` (a MISS turns into a HIT the second time, a BYPASS stays one)."""
    seen = Seen()
    recorder, replayer = sdk(pair.recorder, ns, seen), sdk(pair.replayer, ns, seen)
    first = dump(surface(recorder))
    assert seen.take() == first_seen
    assert dump(surface(recorder)) == first
    assert seen.take() == ["HIT" if c == "MISS" else c for c in first_seen]
    assert dump(surface(replayer)) == first
    assert seen.take() == ["HIT"] * len(first_seen)
    return first


def chat_raw(client: OpenAI) -> Any:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK)
    assert raw.status_code == 200
    return raw.parse()


def chat_stream_usage(client: OpenAI) -> Any:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        stream=True,
        stream_options={"include_usage": True},
    )
    return list(stream)


def chat_streaming_response(client: OpenAI) -> Any:
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=ASK,
        stream=True,
    ) as response:
        return list(response.parse())


def chat_stream_helper(client: OpenAI) -> Any:
    with client.chat.completions.stream(model=MODEL, messages=ASK) as stream:
        events = [e.type for e in stream]
        return events, stream.get_final_completion()


class Weather(pydantic.BaseModel):
    city: str
    days: int


def parse_tool(client: OpenAI) -> Any:
    parsed = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris for 3 days?"}],
        tools=[openai.pydantic_function_tool(Weather)],
        tool_choice="required",
    )
    (call,) = parsed.choices[0].message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, Weather)
    return parsed


def tools_named(client: OpenAI) -> Any:
    tool: ChatCompletionToolParam = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
    answer = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        parallel_tool_calls=False,
    )
    assert answer.choices[0].finish_reason == "tool_calls"
    return answer


def n_two(client: OpenAI) -> Any:
    answer = client.chat.completions.create(model=MODEL, messages=ASK, n=2)
    assert [c.index for c in answer.choices] == [0, 1]
    return answer


def logprobs(client: OpenAI) -> Any:
    return client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        logprobs=True,
        top_logprobs=2,
    )


def extra_body_seed(client: OpenAI) -> Any:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=ASK,
        extra_body={"seed": 7},
    )
    assert (raw.headers["X-Repro-Seed"], raw.headers["X-Repro-Seed-Source"]) == ("7", "client")
    return raw.parse()


def legacy_completions(client: OpenAI) -> Any:
    plain = client.completions.create(model="davinci-002", prompt="Say this")
    streamed = list(client.completions.create(model="davinci-002", prompt="Say this", stream=True))
    return plain, streamed


def embeddings_default(client: OpenAI) -> Any:
    made = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert all(len(d.embedding) == 16 for d in made.data)
    return made


def responses_flow(client: OpenAI) -> Any:
    first = client.responses.create(model=MODEL, input="Name a colour.")
    chained = client.responses.create(
        model=MODEL, input="And another?", previous_response_id=first.id
    )
    events = list(
        client.responses.create(
            model=MODEL, input="Streamed.", previous_response_id=chained.id, stream=True
        )
    )
    (done,) = [e for e in events if e.type == "response.completed"]
    fetched = client.responses.retrieve(chained.id)
    assert fetched.output_text == chained.output_text
    streamed = client.responses.retrieve(done.response.id)
    assert streamed.output_text == done.response.output_text
    return first, chained, events, fetched, streamed


SURFACES: dict[str, tuple[Surface, int]] = {
    "with_raw_response": (chat_raw, 1),
    "stream_include_usage": (chat_stream_usage, 1),
    "with_streaming_response": (chat_streaming_response, 1),
    "chat_completions_stream_helper": (chat_stream_helper, 1),
    "parse_pydantic_tool": (parse_tool, 1),
    "tool_choice_named": (tools_named, 1),
    "n_2": (n_two, 1),
    "logprobs_top_2": (logprobs, 1),
    "extra_body_seed": (extra_body_seed, 1),
    "legacy_completions": (legacy_completions, 2),
    "embeddings_base64_default": (embeddings_default, 1),
}


@pytest.mark.parametrize("name", SURFACES)
def test_a_surface_hits_the_second_time_and_replays_offline(pair: Pair, ns: str, name: str) -> None:
    surface, calls = SURFACES[name]
    recorded_then_replayed(pair, ns, surface, calls)


def test_responses_create_stream_chain_and_retrieve(pair: Pair, ns: str) -> None:
    """`responses.retrieve` reaches the upstream in readwrite mode and the cache in replay."""
    replayed_as(pair, ns, responses_flow, ["MISS"] * 3 + ["BYPASS"] * 2)


def test_the_stream_ends_with_the_usage_chunk_on_a_hit_too(pair: Pair, ns: str) -> None:
    chunks = recorded_then_replayed(pair, ns, chat_stream_usage)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])


def test_embeddings_in_base64_and_in_float_keep_apart_and_decode_alike(pair: Pair, ns: str) -> None:
    """The SDK asks for base64 unless told and decodes it; a float request must not be served
    the base64 body (the SDK would hand the caller a string) nor the other way round."""
    seen = Seen()
    client = sdk(pair.recorder, ns, seen)
    asked: dict[str, Any] = {"model": "text-embedding-3-small", "input": "kept apart"}
    raws = [
        client.embeddings.with_raw_response.create(**asked, encoding_format=form)
        for form in ("base64", "float", "base64", "float")
    ]
    assert seen.take() == ["MISS", "MISS", "HIT", "HIT"]
    assert raws[0].headers["X-Repro-Key"] != raws[1].headers["X-Repro-Key"]
    b64, floats = raws[2].http_response.json(), raws[3].http_response.json()
    assert isinstance(b64["data"][0]["embedding"], str)
    assert isinstance(floats["data"][0]["embedding"], list)
    decoded = client.embeddings.create(**asked).data[0].embedding
    assert seen.take() == ["HIT"]
    assert decoded == pytest.approx(floats["data"][0]["embedding"], rel=1e-6)
    offline = sdk(pair.replayer, ns, seen).embeddings.create(**asked).data[0].embedding
    assert seen.take() == ["HIT"]
    assert offline == decoded
    stored = base64.b64decode(b64["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(stored) // 4}f", stored)) == decoded  # the bytes, kept


def test_the_async_client_hits_and_replays(pair: Pair, ns: str) -> None:
    seen = Seen()

    async def run(proxy: Proxy) -> Any:
        transport = openai.DefaultAsyncHttpxClient(event_hooks={"response": [seen.ahook]})
        async with AsyncOpenAI(
            base_url=proxy.v1,
            api_key=KEY,
            max_retries=0,
            default_headers={"X-Repro-Namespace": ns},
            http_client=transport,
        ) as client:
            chat = await client.chat.completions.create(model=MODEL, messages=ASK)
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=ASK,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [c async for c in stream]
            embedded = await client.embeddings.create(model="text-embedding-3-small", input="x")
            async with client.responses.stream(model=MODEL, input="Async.") as events:
                kinds = [e.type async for e in events]
                final = await events.get_final_response()
            return dump([chat, chunks, embedded, final]), kinds

    first = asyncio.run(run(pair.recorder))
    assert seen.take() == ["MISS"] * 4
    assert asyncio.run(run(pair.recorder)) == first
    assert seen.take() == ["HIT"] * 4
    assert asyncio.run(run(pair.replayer)) == first
    assert seen.take() == ["HIT"] * 4


def test_sdk_retries_of_a_429_and_a_500_land_on_one_key_and_the_success_is_cached(
    pair: Pair, sim: Sim, ns: str
) -> None:
    """The SDK retries with a new `x-stainless-retry-count` (and read timeout when `timeout=`
    differs): the proxy keys neither, so the retry's answer serves the next call, whatever
    the client's timeout."""
    seen = Seen()
    client = sdk(pair.recorder, ns, seen, max_retries=2, timeout=20.0)
    sim.fault(kind="status", status=429, count=1, headers={"retry-after-ms": "10"})
    sim.fault(kind="status", status=500, count=1, headers={"retry-after-ms": "10"})
    made = client.chat.completions.create(model=MODEL, messages=ASK)
    assert seen.take() == ["MISS", "MISS", "MISS"]
    sent = sim.llm_requests()
    assert [r["headers"]["x-stainless-retry-count"] for r in sent] == ["0", "1", "2"]
    other = sdk(pair.recorder, ns, seen, timeout=3.0)
    again = other.chat.completions.with_raw_response.create(model=MODEL, messages=ASK)
    assert again.headers["X-Repro-Cache"] == "HIT" and again.parse() == made
    assert len(sim.llm_requests()) == 3 and seen.take() == ["HIT"]
    sim.fault(kind="status", status=503, count=1, headers={"retry-after-ms": "10"})
    streamed = list(client.chat.completions.create(model=MODEL, messages=ASK, stream=True))
    assert seen.take() == ["MISS", "MISS"]  # a 503, then the stream, stored
    replayed = list(
        sdk(pair.replayer, ns, seen).chat.completions.create(model=MODEL, messages=ASK, stream=True)
    )
    assert seen.take() == ["HIT"] and dump(replayed) == dump(streamed)


def test_a_client_timeout_retried_joins_the_call_in_flight_which_is_then_cached(
    pair: Pair, sim: Sim, ns: str
) -> None:
    """The SDK gives up on a slow answer and retries; the proxy neither calls the upstream
    twice nor drops the answer it was waiting for."""
    seen = Seen()
    sim.settings(latency=1.5)
    impatient = sdk(pair.recorder, ns, seen, max_retries=1, timeout=0.4)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model=MODEL, messages=ASK)
    patient = sdk(pair.recorder, ns, seen, timeout=10.0)
    made = patient.chat.completions.create(model=MODEL, messages=ASK)
    again = patient.chat.completions.create(model=MODEL, messages=ASK)
    assert seen.take()[-1] == "HIT" and again == made
    assert len(sim.llm_requests()) == 1


def test_per_request_control_headers_through_extra_headers(pair: Pair, ns: str) -> None:
    seen = Seen()
    client = sdk(pair.recorder, ns, seen, max_retries=2)

    def ask(**headers: Any) -> Any:
        return client.chat.completions.create(model=MODEL, messages=ASK, extra_headers=headers)

    first = ask()
    ask(**{"Cache-Control": "no-store"})
    ask(**{"Cache-Control": "no-cache"})
    ask()
    ask(**{"X-Repro-Namespace": ns + "-other"})
    ask(**{"Cache-Control": "max-age=3600"})
    assert seen.take() == ["MISS", "BYPASS", "REFRESH", "HIT", "MISS", "HIT"]
    with pytest.raises(openai.APIStatusError) as missed:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Never asked."}],
            extra_headers={"Cache-Control": "only-if-cached"},
        )
    assert (missed.value.status_code, missed.value.code) == (504, "cache_miss")
    assert seen.take() == ["MISS"]  # once: a cache_miss says it is not worth a retry
    assert first.choices[0].message.content


def test_record_mode_refreshes_and_replay_serves_the_last_recording(
    pair: Pair, sim: Sim, redis_server: RedisServer, ns: str
) -> None:
    seen = Seen()
    with running_proxies(
        sim.v1,
        {"record": ("--store", redis_server.url, "--secret", SECRET, "--cache-mode", "record")},
    ) as started:
        recording = sdk(started["record"], ns, seen)
        made = [chat_raw(recording) for _ in range(2)]
        assert seen.take() == ["REFRESH", "REFRESH"]
    assert dump(chat_raw(sdk(pair.replayer, ns, seen))) == dump(made[1])
    assert seen.take() == ["HIT"]


def test_options_that_change_the_answer_change_the_key(pair: Pair, ns: str) -> None:
    """Each of these asks for something else of the answer (a usage chunk, log probabilities,
    more choices, one tool call at most): none may be served another's entry."""
    client = sdk(pair.recorder, ns, Seen())
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    base: dict[str, Any] = {"model": MODEL, "messages": ASK}
    variants: list[dict[str, Any]] = [
        {},
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"logprobs": True},
        {"logprobs": True, "top_logprobs": 2},
        {"logprobs": True, "top_logprobs": 3},
        {"n": 2},
        {"tools": [tool]},
        {"tools": [tool], "parallel_tool_calls": False},
        {"tools": [tool], "tool_choice": "required"},
        {"response_format": {"type": "json_object"}},
    ]
    keys = []
    for extra in variants:
        with client.chat.completions.with_streaming_response.create(**base, **extra) as raw:
            raw.read()
            keys.append(raw.headers["X-Repro-Key"])
    assert len(set(keys)) == len(variants)


def test_azure_client_with_azure_deployment_hits_and_replays(
    start_proxy: ProxyFactory, sim: Sim, redis_server: RedisServer, ns: str
) -> None:
    """`AzureOpenAI(azure_deployment=…)` puts the deployment in the base URL: chat (plain and
    streamed), embeddings (base64 by default) and responses go through the proxy's Azure routes."""
    store = ("--store", redis_server.url, "--secret", SECRET)
    recorder = start_proxy(*store, upstream=sim.url)
    replayer = start_proxy(
        *store, "--cache-mode", "replay", upstream=f"http://127.0.0.1:{free_port()}"
    )
    seen = Seen()

    def run(proxy: Proxy) -> Any:
        client = closed_after_test(
            AzureOpenAI(
                azure_endpoint=proxy.url,
                api_version=AZURE_VERSION,
                azure_deployment="chat-dep",
                api_key="az-key",
                max_retries=0,
                default_headers={"X-Repro-Namespace": ns},
                http_client=openai.DefaultHttpxClient(event_hooks={"response": [seen.hook]}),
            )
        )
        chat = client.chat.completions.create(model="unused", messages=ASK)
        chunks = list(
            client.chat.completions.create(
                model="unused",
                messages=ASK,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        embedded = client.embeddings.create(model="unused", input="x")
        answered = client.responses.create(model="chat-dep", input="hi")
        return dump([chat, chunks, embedded, answered])

    first = run(recorder)
    assert seen.take() == ["MISS"] * 4
    assert run(recorder) == first and seen.take() == ["HIT"] * 4
    assert run(replayer) == first and seen.take() == ["HIT"] * 4
    paths = [r["path"] for r in sim.llm_requests()]
    assert paths[:3] == ["/openai/deployments/chat-dep/chat/completions"] * 2 + [
        "/openai/deployments/chat-dep/embeddings"
    ]


def test_the_helpers_share_the_entries_of_the_plain_calls(pair: Pair, ns: str) -> None:
    """`parse` sends `"stream": false` and a helper header, `.stream()` a helper header: the
    same question through a helper is the same entry."""
    seen = Seen()
    client = sdk(pair.recorder, ns, seen)
    made = client.chat.completions.create(model=MODEL, messages=ASK)
    parsed = client.chat.completions.parse(model=MODEL, messages=ASK)
    assert parsed.choices[0].message.content == made.choices[0].message.content
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, stream=True))
    with client.chat.completions.stream(model=MODEL, messages=ASK) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "".join(
        c.choices[0].delta.content or "" for c in chunks
    )
    assert seen.take() == ["MISS", "HIT", "MISS", "HIT"]


def test_offline_misses_are_final_for_the_sdk_on_every_surface(pair: Pair, ns: str) -> None:
    """With its default two retries the SDK asks once per miss: streamed, embeddings, legacy,
    Responses (created and retrieved) all carry `x-should-retry: false`."""
    seen = Seen()
    client = sdk(pair.replayer, ns, seen, max_retries=2)
    calls: list[Callable[[], Any]] = [
        lambda: list(client.chat.completions.create(model=MODEL, messages=ASK, stream=True)),
        lambda: client.embeddings.create(model="text-embedding-3-small", input="never"),
        lambda: client.completions.create(model="davinci-002", prompt="never"),
        lambda: client.responses.create(model=MODEL, input="never"),
        lambda: list(client.responses.create(model=MODEL, input="never", stream=True)),
        lambda: client.responses.retrieve("resp_never"),
    ]
    for call in calls:
        with pytest.raises(openai.APIStatusError) as missed:
            call()
        assert missed.value.response.headers["x-should-retry"] == "false"
        assert len(seen.take()) == 1


def test_an_async_batch_of_identical_questions_reaches_the_upstream_once(
    pair: Pair, sim: Sim, ns: str
) -> None:
    """`asyncio.gather` of the same question (a batch job's duplicates) in flight together:
    one upstream call, one answer for all."""
    sim.settings(latency=0.3)

    async def batch() -> list[Any]:
        async with AsyncOpenAI(
            base_url=pair.recorder.v1,
            api_key=KEY,
            max_retries=0,
            default_headers={"X-Repro-Namespace": ns},
        ) as client:
            asks = [("Same.", 0)] * 5 + [("Other.", 1), ("Other.", 2)]
            return await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": text}], seed=seed
                    )
                    for text, seed in asks
                )
            )

    answers = asyncio.run(batch())
    assert len({a.id for a in answers[:5]}) == 1
    assert answers[5].id != answers[6].id
    assert len(sim.llm_requests()) == 3


def test_every_surface_replays_from_a_cassette_offline(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """The README's CI story: record into a cassette, stop, replay it with no upstream. Every
    surface above, base64 embeddings and Responses (by id too) included, comes back alike."""
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    seen = Seen()
    made = {
        name: dump(surface(sdk(recorder, "tape", seen))) for name, (surface, _) in SURFACES.items()
    }
    made["responses"] = dump(responses_flow(sdk(recorder, "tape", seen)))
    recorder.proc.send_signal(signal.SIGTERM)
    assert recorder.proc.wait(timeout=15) == 0
    replayer = start_proxy(
        "--cache-scope",
        "shared",
        "--cassette",
        str(tape),
        "--cache-mode",
        "replay",
        upstream=f"http://127.0.0.1:{free_port()}/v1",
    )
    seen.take()
    for name, (surface, _) in SURFACES.items():
        assert dump(surface(sdk(replayer, "tape", seen))) == made[name], name
    assert dump(responses_flow(sdk(replayer, "tape", seen))) == made["responses"]
    assert set(seen.take()) == {"HIT"}


@pytest.mark.parametrize(("scope", "renewed"), [("key", "MISS"), ("shared", "HIT")])
def test_an_entra_token_renewed_shares_answers_only_in_shared_scope(
    start_proxy: ProxyFactory, sim: Sim, ns: str, scope: str, renewed: str
) -> None:
    """`AzureOpenAI(azure_ad_token=…)` sends `Authorization: Bearer`, a new token each hour:
    the README's advice for it (shared scope) holds: the upstream vouches for the new token,
    as it refuses made-up ones."""
    sim.accept_keys("entra-token-1", "entra-token-2")
    proxy = start_proxy("--cache-scope", scope, upstream=sim.url)
    seen = Seen()
    for token in ("entra-token-1", "entra-token-1", "entra-token-2"):
        client = AzureOpenAI(
            azure_endpoint=proxy.url,
            api_version=AZURE_VERSION,
            azure_ad_token=token,
            max_retries=0,
            default_headers={"X-Repro-Namespace": ns},
            http_client=openai.DefaultHttpxClient(event_hooks={"response": [seen.hook]}),
        )
        with closed_after_test(client) as made:
            made.chat.completions.create(model="chat-dep", messages=ASK)
    assert seen.take() == ["MISS", "HIT", renewed]
    assert [r["headers"]["Authorization"] for r in sim.llm_requests()][:1] == [
        "Bearer entra-token-1"
    ]


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "path",
    [
        f"/openai/deployments/chat-dep/chat/completions?api-version={AZURE_VERSION}",
        "/openai/v1/chat/completions",
    ],
)
async def test_a_revoked_azure_key_reads_nothing_once_its_verdict_expires(
    sim: Sim, path: str
) -> None:
    """The key check asked `<root>/models`, which an Azure resource (whose root has no /v1)
    answers 404: it could never tell, so a revoked `api-key` read its own entries forever. It
    asks Azure's own model list now, as the upstream's 401 for the key then says."""
    clock = Clock()
    settings = config.load({"upstream": sim.url, "key_check_interval": "300"}, environ={})
    client = TestClient(TestServer(create_app(settings, clock=clock, environ={})))
    await client.start_server()
    body = orjson.dumps({"model": "chat-dep", "messages": ASK})

    async def post() -> tuple[int, str]:
        response = await client.post(path, data=body, headers={"api-key": "az-revoked"})
        await response.read()
        return response.status, response.headers.get("X-Repro-Cache", "-")

    try:
        assert await post() == (200, "MISS")
        assert await post() == (200, "HIT")
        sim.accept_keys("az-other")
        for _ in range(3):
            clock.now += 301
            assert (await post())[0] == 401
    finally:
        await client.close()
    checks = [r for r in sim.requests() if r["method"] == "GET"]
    assert checks and all(r["path"].startswith("/openai/") for r in checks)
