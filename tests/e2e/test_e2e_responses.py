"""The Responses API end to end: the official SDK (sync, async, streaming) -> proxy -> sim.

Whole and streamed responses are cached like chat (MISS then HIT, byte for byte), never get a
seed, and are stored only when they completed. A response fetched by id is served from the
cache in replay mode, only to the tenant (and namespace) that created it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.responses import Response

from tests.fixtures_procs import (
    Proxy,
    ProxyFactory,
    Sim,
    closed_after_test,
    stop,
)

MODEL = "gpt-4o-mini"
INPUT = "Name three rivers."
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
# The shared proxies, by name: the `proxies` fixture of tests/e2e/conftest.py starts them.
CONFIGS = {"default": (), "strict": ("--enforce", "strict")}


@pytest.fixture
def proxy(proxies: dict[str, Proxy], sim: Sim) -> Proxy:
    return proxies["default"]


def client(proxy: Proxy, ns: str, key: str = "sk-resp") -> OpenAI:
    headers = {"X-Repro-Namespace": ns}
    return closed_after_test(
        OpenAI(base_url=proxy.v1, api_key=key, max_retries=0, timeout=10, default_headers=headers)
    )


def async_client(proxy: Proxy, ns: str) -> AsyncOpenAI:
    headers = {"X-Repro-Namespace": ns}
    return AsyncOpenAI(base_url=proxy.v1, api_key="sk-resp", max_retries=0, default_headers=headers)


def post(proxy: Proxy, ns: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    sent = {"Authorization": "Bearer sk-resp", "X-Repro-Namespace": ns, **headers}
    return httpx.post(proxy.v1 + "/responses", json=body, headers=sent, timeout=10)


def stored(proxy: Proxy, ns: str, body: dict[str, Any]) -> bool:
    response = post(proxy, ns, body, **{"Cache-Control": "only-if-cached"})
    assert response.status_code in (200, 504), response.text
    return response.status_code == 200


def upstream_bodies(sim: Sim) -> list[dict[str, Any]]:
    return [orjson.loads(r["body"]) for r in sim.llm_requests() if r["path"] == "/v1/responses"]


# --- whole responses -------------------------------------------------------------------------


def test_sync_create_is_a_miss_then_a_hit_with_the_same_response(
    proxy: Proxy, sim: Sim, ns: str
) -> None:
    sdk = client(proxy, ns)
    first = sdk.responses.with_raw_response.create(model=MODEL, input=INPUT, instructions="Hi")
    again = sdk.responses.with_raw_response.create(model=MODEL, input=INPUT, instructions="Hi")
    assert [first.headers["X-Repro-Cache"], again.headers["X-Repro-Cache"]] == ["MISS", "HIT"]
    assert first.headers["X-Repro-Key"] == again.headers["X-Repro-Key"]
    assert first.headers["X-Repro-Fingerprint"] == again.headers["X-Repro-Fingerprint"] == "none"
    assert "X-Repro-Seed" not in first.headers and "X-Repro-Seed" not in again.headers
    assert again.parse().to_dict() == first.parse().to_dict()
    assert again.parse().output_text and again.parse().status == "completed"
    assert upstream_bodies(sim) == [{"input": INPUT, "instructions": "Hi", "model": MODEL}]


async def test_async_create_is_a_miss_then_a_hit(proxy: Proxy, sim: Sim, ns: str) -> None:
    async with async_client(proxy, ns) as sdk:
        outcomes, texts = [], []
        for _ in range(2):
            raw = await sdk.responses.with_raw_response.create(model=MODEL, input=INPUT)
            outcomes.append(raw.headers["X-Repro-Cache"])
            texts.append(raw.parse().output_text)
    assert outcomes == ["MISS", "HIT"] and texts[0] == texts[1]
    assert len(upstream_bodies(sim)) == 1


def test_defaults_share_a_key_and_no_seed_ever_goes_upstream(
    proxy: Proxy, sim: Sim, ns: str
) -> None:
    plain = post(proxy, ns, {"model": MODEL, "input": INPUT})
    noisy = post(
        proxy,
        ns,
        {"input": INPUT, "model": MODEL, "temperature": 1.0, "metadata": {}, "store": True},
    )
    assert plain.headers["X-Repro-Cache"] == "MISS" and noisy.headers["X-Repro-Cache"] == "HIT"
    assert all("seed" not in body for body in upstream_bodies(sim))


def test_the_labels_a_response_echoes_are_never_served_to_other_labels(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """A response echoes the request's `metadata`, `user`, `safety_identifier` and
    `prompt_cache_key`. Left out of the key, one tenant's HIT (here in `shared` scope) handed
    it another tenant's labels: `{"patient": "alice"}` to Bob."""
    proxy = start_proxy("--cache-scope", "shared")
    asked: list[tuple[str, dict[str, Any]]] = [
        ("sk-alice", {"metadata": {"patient": "alice"}, "user": "u-alice"}),
        ("sk-bob", {"metadata": {"patient": "bob"}, "user": "u-bob"}),
        ("sk-bob", {}),
        ("sk-bob", {"prompt_cache_key": "alice-cache"}),
        ("sk-bob", {"metadata": {"patient": "alice"}, "user": "u-alice"}),
    ]
    seen = []
    for key, labels in asked:
        sdk = client(proxy, "labels", key=key)
        raw = sdk.responses.with_raw_response.create(model=MODEL, input=INPUT, **labels)
        answer = raw.parse()
        seen.append((raw.headers["X-Repro-Cache"], answer.metadata, answer.user))
    assert seen == [
        ("MISS", {"patient": "alice"}, "u-alice"),
        ("MISS", {"patient": "bob"}, "u-bob"),
        ("MISS", {}, None),
        ("MISS", {}, None),
        ("HIT", {"patient": "alice"}, "u-alice"),  # the same labels: the answer they were given
    ]


def test_a_response_the_upstream_did_not_keep_never_answers_one_asked_to_be_kept(
    proxy: Proxy, sim: Sim, ns: str
) -> None:
    """`store: false` leaves no response upstream to fetch or chain from: served to a request
    that asked to keep it, its id would be a 404 the moment it was used."""
    sdk = client(proxy, ns)
    outcomes = [
        sdk.responses.with_raw_response.create(model=MODEL, input=INPUT, **kept).headers[
            "X-Repro-Cache"
        ]
        for kept in ({"store": False}, {"store": True}, {}, {"store": False})
    ]
    assert outcomes == ["MISS", "MISS", "HIT", "HIT"]
    assert [body.get("store") for body in upstream_bodies(sim)] == [False, True]


def test_strict_pins_temperature_and_top_p_and_adds_no_seed(
    proxies: dict[str, Proxy], sim: Sim, ns: str
) -> None:
    response = post(proxies["strict"], ns, {"model": MODEL, "input": INPUT, "temperature": 0.8})
    assert response.status_code == 200
    assert upstream_bodies(sim) == [{"input": INPUT, "model": MODEL, "temperature": 0, "top_p": 1}]


def test_a_background_response_is_passed_through_and_never_stored(
    proxy: Proxy, sim: Sim, ns: str
) -> None:
    body = {"model": MODEL, "input": INPUT, "background": True}
    for _ in range(2):
        response = post(proxy, ns, body)
        assert response.headers["X-Repro-Cache"] == "BYPASS"
        assert response.json()["status"] == "queued"
    assert len(upstream_bodies(sim)) == 2


@pytest.mark.parametrize(
    "answer",
    [
        {"error": {"message": "overloaded", "type": "server_error"}},
        {"object": "response", "status": "failed", "output": [], "id": "resp_x"},
    ],
)
def test_a_200_that_is_not_a_completed_response_is_not_stored(
    proxy: Proxy, sim: Sim, ns: str, answer: dict[str, Any]
) -> None:
    sim.fault(kind="status", status=200, body=answer)
    body = {"model": MODEL, "input": INPUT}
    assert post(proxy, ns, body).json() == answer
    assert not stored(proxy, ns, body)


def test_stale_if_error_serves_a_stored_response_when_the_upstream_fails(
    proxy: Proxy, sim: Sim, ns: str
) -> None:
    body = {"model": MODEL, "input": INPUT}
    first = post(proxy, ns, body)
    sim.fault(kind="status", status=503)
    stale = post(proxy, ns, body, **{"Cache-Control": "no-cache, stale-if-error=600"})
    assert stale.headers["X-Repro-Cache"] == "STALE"
    assert stale.content == first.content


def test_metrics_count_the_responses_route(proxy: Proxy, sim: Sim, ns: str) -> None:
    before = proxy.metric("repro_requests_total", route="/v1/responses", cache="hit")
    body = {"model": MODEL, "input": INPUT}
    post(proxy, ns, body), post(proxy, ns, body)
    assert proxy.metric("repro_requests_total", route="/v1/responses", cache="hit") == before + 1


async def test_identical_concurrent_misses_make_one_upstream_call(
    proxy: Proxy, sim: Sim, ns: str
) -> None:
    sim.settings(latency=0.5)
    headers = {"Authorization": "Bearer sk-resp", "X-Repro-Namespace": ns}
    body = {"model": MODEL, "input": INPUT}
    async with httpx.AsyncClient(base_url=proxy.v1, headers=headers, timeout=10) as http:
        answers = await asyncio.gather(*(http.post("/responses", json=body) for _ in range(4)))
    assert sorted(a.headers["X-Repro-Cache"] for a in answers) == ["HIT", "HIT", "HIT", "MISS"]
    assert len({a.content for a in answers}) == 1
    assert len(upstream_bodies(sim)) == 1


# --- streams ---------------------------------------------------------------------------------


def test_a_streamed_hit_replays_the_exact_typed_events(proxy: Proxy, sim: Sim, ns: str) -> None:
    body = orjson.dumps({"model": MODEL, "input": INPUT, "stream": True})
    headers = {"Authorization": "Bearer sk-resp", "X-Repro-Namespace": ns}
    bodies, outcomes = [], []
    with httpx.Client(base_url=proxy.v1, headers=headers, timeout=10) as http:
        for _ in range(2):
            with http.stream("POST", "/responses", content=body) as response:
                assert response.headers["Content-Type"].startswith("text/event-stream")
                outcomes.append(response.headers["X-Repro-Cache"])
                bodies.append(b"".join(response.iter_raw()))
    assert outcomes == ["MISS", "HIT"] and bodies[0] == bodies[1]
    assert bodies[0].startswith(b"event: response.created\ndata: {")
    assert b"event: response.output_text.delta\n" in bodies[0]
    assert b'"sequence_number":' in bodies[0]
    assert b"[DONE]" not in bodies[0]
    last = bodies[0].rstrip(b"\n").split(b"\n\n")[-1]
    assert last.startswith(b"event: response.completed\n")


def test_the_stream_helper_and_create_stream_assemble_the_same_response_from_a_hit(
    proxy: Proxy, sim: Sim, ns: str
) -> None:
    sdk = client(proxy, ns)
    finals = []
    for _ in range(2):
        with sdk.responses.stream(model=MODEL, input=INPUT, tools=TOOLS) as stream:  # type: ignore[arg-type]
            finals.append(stream.get_final_response().to_dict())
    events = list(sdk.responses.create(model=MODEL, input=INPUT, tools=TOOLS, stream=True))  # type: ignore[arg-type]
    completed = events[-1]
    assert completed.type == "response.completed"
    assert finals[0] == finals[1]
    assert finals[0]["id"] == completed.response.id
    assert finals[0]["output"][0]["content"][0]["text"] == completed.response.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert len(upstream_bodies(sim)) == 1


def test_a_forced_function_call_streams_and_replays(proxy: Proxy, sim: Sim, ns: str) -> None:
    sdk = client(proxy, ns)
    calls = []
    for _ in range(2):
        with sdk.responses.stream(
            model=MODEL,
            input=INPUT,
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice="required",
        ) as stream:
            item = stream.get_final_response().output[0]
            assert item.type == "function_call"
            calls.append((item.name, item.arguments))
    assert calls[0] == calls[1] and calls[0][0] == "get_weather"
    assert set(orjson.loads(calls[0][1])) == {"city"}
    assert len(upstream_bodies(sim)) == 1


async def test_async_stream_is_a_miss_then_a_hit(proxy: Proxy, sim: Sim, ns: str) -> None:
    async with async_client(proxy, ns) as sdk:
        runs = []
        for _ in range(2):
            async with sdk.responses.with_streaming_response.create(
                model=MODEL, input=INPUT, stream=True
            ) as raw:
                stream = await raw.parse()
                events = [event.to_dict() async for event in stream]
                runs.append((raw.headers["X-Repro-Cache"], events))
    assert [outcome for outcome, _ in runs] == ["MISS", "HIT"]
    assert runs[0][1] == runs[1][1]


def test_a_cut_stream_breaks_for_the_client_and_is_never_stored(
    proxy: Proxy, sim: Sim, ns: str
) -> None:
    sim.fault(kind="cut", after=3)
    events = []
    with pytest.raises(openai.APIConnectionError):
        for event in client(proxy, ns).responses.create(model=MODEL, input=INPUT, stream=True):
            events.append(event.type)
    assert events == ["response.created", "response.in_progress", "response.output_item.added"]
    assert_stored_only_once_it_completes(proxy, ns)


@pytest.mark.parametrize(
    ("fault", "last"),
    [
        ("error_event", "error"),
        ("response_failed", "response.failed"),
        ("response_incomplete", "response.incomplete"),
    ],
)
def test_a_stream_ending_in_failure_reaches_the_client_and_is_never_stored(
    proxy: Proxy, sim: Sim, ns: str, fault: str, last: str
) -> None:
    sim.fault(kind=fault, after=4)
    sdk = client(proxy, ns)
    events = [e.type for e in sdk.responses.create(model=MODEL, input=INPUT, stream=True)]
    assert events[-1] == last and len(events) == 5
    assert "response.completed" not in events
    assert_stored_only_once_it_completes(proxy, ns)


def assert_stored_only_once_it_completes(proxy: Proxy, ns: str) -> None:
    body = {"model": MODEL, "input": INPUT, "stream": True}
    assert not stored(proxy, ns, body)
    assert post(proxy, ns, body).headers["X-Repro-Cache"] == "MISS"
    assert stored(proxy, ns, body)


# --- GET /v1/responses/{id} ------------------------------------------------------------------


def test_outside_replay_a_fetch_by_id_passes_through(proxy: Proxy, sim: Sim, ns: str) -> None:
    sdk = client(proxy, ns)
    created = sdk.responses.create(model=MODEL, input=INPUT)
    fetched = sdk.responses.with_raw_response.retrieve(created.id)
    assert fetched.headers["X-Repro-Cache"] == "BYPASS"
    assert fetched.parse().output_text == created.output_text
    assert [r["path"] for r in sim.requests()][-1] == f"/v1/responses/{created.id}"
    deleted = httpx.delete(
        proxy.v1 + f"/responses/{created.id}", headers={"Authorization": "Bearer k"}
    )
    assert deleted.headers["X-Repro-Cache"] == "BYPASS"
    assert sim.requests()[-1]["method"] == "DELETE"


def essence(response: Any) -> tuple[Any, ...]:
    """What a client reads of a response (the stream helper adds `parsed` fields)."""
    return response.id, response.status, response.output_text, response.usage.to_dict()


@pytest.fixture
def recorded(start_proxy: ProxyFactory, redis_url: str, sim: Sim) -> tuple[Proxy, Proxy]:
    """A recording proxy and a replaying one sharing one Redis store."""
    shared = ("--store", redis_url, "--secret", "s3cret-of-16-bytes")
    return start_proxy(*shared), start_proxy(*shared, "--cache-mode", "replay")


def created_for_replay(recorded: tuple[Proxy, Proxy], ns: str) -> tuple[Proxy, Response]:
    """The replaying proxy, and a response created through the recording one."""
    recorder, replayer = recorded
    return replayer, client(recorder, ns).responses.create(model=MODEL, input=INPUT)


def test_in_replay_a_fetch_by_id_is_served_from_the_cache(
    recorded: tuple[Proxy, Proxy], sim: Sim, ns: str
) -> None:
    recorder, replayer = recorded
    whole = client(recorder, ns).responses.create(model=MODEL, input=INPUT)
    with client(recorder, ns).responses.stream(model=MODEL, input="Stream it.") as stream:
        streamed = stream.get_final_response()
    sent = len(sim.requests())
    sdk = client(replayer, ns)
    for created in (whole, streamed):
        raw = sdk.responses.with_raw_response.retrieve(created.id)
        assert raw.headers["X-Repro-Cache"] == "HIT"
        assert essence(raw.parse()) == essence(created)
    headers = {"Authorization": "Bearer sk-resp", "X-Repro-Namespace": ns}
    events = httpx.get(replayer.v1 + f"/responses/{streamed.id}?stream=true", headers=headers)
    assert events.headers["Content-Type"].startswith("text/event-stream")
    assert events.content.startswith(b"event: response.created\n")
    assert b"event: response.completed\n" in events.content
    whole_events = httpx.get(replayer.v1 + f"/responses/{whole.id}?stream=true", headers=headers)
    assert whole_events.status_code == 504
    assert len(sim.requests()) == sent


def test_in_replay_an_unknown_id_is_a_cache_miss(
    recorded: tuple[Proxy, Proxy], sim: Sim, ns: str
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client(recorded[1], ns).responses.retrieve("resp_unknown")
    assert caught.value.status_code == 504
    assert caught.value.response.json()["error"]["code"] == "cache_miss"
    assert caught.value.response.headers["x-should-retry"] == "false"  # like every cache_miss
    assert sim.requests() == []


def test_another_tenant_or_namespace_cannot_fetch_a_response_by_its_id(
    recorded: tuple[Proxy, Proxy], sim: Sim, ns: str
) -> None:
    replayer, created = created_for_replay(recorded, ns)
    assert client(replayer, ns).responses.retrieve(created.id).id == created.id
    for intruder in (client(replayer, ns, key="sk-attacker"), client(replayer, ns + "-other")):
        with pytest.raises(openai.APIStatusError) as caught:
            intruder.responses.retrieve(created.id)
        assert caught.value.status_code == 504
        assert created.output_text not in caught.value.response.text
    keyless = httpx.get(replayer.v1 + f"/responses/{created.id}", headers={"X-Repro-Namespace": ns})
    assert keyless.status_code == 504


def test_an_id_whose_answer_was_replaced_fetches_nothing_else(
    recorded: tuple[Proxy, Proxy], sim: Sim, ns: str
) -> None:
    """A refresh (or a purge, then the same request again) stores a new response, with a new id,
    under the same key and fingerprint: the old id's index still pointed there, and fetching it
    answered the new response, whose id is another."""
    recorder, replayer = recorded
    first = client(recorder, ns).responses.create(model=MODEL, input=INPUT)
    again = {"model": MODEL, "input": INPUT}
    refreshed = post(recorder, ns, again, **{"Cache-Control": "no-cache"})
    second = refreshed.json()["id"]
    assert (refreshed.headers["X-Repro-Cache"], second != first.id) == ("REFRESH", True)
    sdk = client(replayer, ns)
    assert sdk.responses.retrieve(second).id == second
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.responses.retrieve(first.id)
    assert caught.value.status_code == 504
    assert second not in caught.value.response.text


@pytest.mark.parametrize("hostile", ["..%2F..%2Fadmin", "resp_" + "x" * 300, "%00", "a;b"])
def test_a_hostile_id_in_replay_is_a_miss_and_reaches_nothing(
    recorded: tuple[Proxy, Proxy], sim: Sim, hostile: str
) -> None:
    response = httpx.get(
        recorded[1].v1 + "/responses/" + hostile, headers={"Authorization": "Bearer sk-resp"}
    )
    assert response.status_code in (400, 404, 504)
    assert "error" in response.json()
    assert sim.requests() == []


def test_a_replay_of_a_recorded_response_never_reaches_the_upstream(
    recorded: tuple[Proxy, Proxy], sim: Sim, ns: str
) -> None:
    replayer, first = created_for_replay(recorded, ns)
    sent = len(sim.requests())
    again = client(replayer, ns).responses.with_raw_response.create(model=MODEL, input=INPUT)
    assert again.headers["X-Repro-Cache"] == "HIT"
    assert again.parse().to_dict() == first.to_dict()
    with pytest.raises(openai.APIStatusError) as caught:
        client(replayer, ns).responses.create(model=MODEL, input="never recorded")
    assert caught.value.response.json()["error"]["code"] == "cache_miss"
    assert len(sim.requests()) == sent


def test_a_cassette_replays_responses_and_their_fetch_by_id(
    start_proxy: ProxyFactory, sim: Sim, ns: str, tmp_path: Any
) -> None:
    cassette = str(tmp_path / "llm.jsonl")
    flags = ("--cache-scope", "shared", "--cassette", cassette)
    recorder = start_proxy(*flags, "--cache-mode", "record")
    whole = client(recorder, ns).responses.create(model=MODEL, input=INPUT)
    with client(recorder, ns).responses.stream(model=MODEL, input="Stream it.") as stream:
        streamed = stream.get_final_response()
    stop(recorder.proc)  # the cassette is written at exit
    sent = len(sim.requests())

    replayer = start_proxy(*flags, "--cache-mode", "replay")
    sdk = client(replayer, ns, key="sk-ci")
    again = sdk.responses.with_raw_response.create(model=MODEL, input=INPUT)
    assert again.headers["X-Repro-Cache"] == "HIT"
    assert essence(again.parse()) == essence(whole)
    with sdk.responses.stream(model=MODEL, input="Stream it.") as stream:
        assert stream.get_final_response().id == streamed.id
    for created in (whole, streamed):
        assert essence(sdk.responses.retrieve(created.id)) == essence(created)
    # in `shared` scope a response is fetched by whoever was answered with it, not by its id alone
    stranger = client(replayer, ns, key="sk-stranger")
    with pytest.raises(openai.APIStatusError) as caught:
        stranger.responses.retrieve(streamed.id)
    assert caught.value.status_code == 504
    assert len(sim.requests()) == sent


def test_a_hostile_upstream_cannot_plant_ids_or_fingerprints(
    recorded: tuple[Proxy, Proxy], sim: Sim, ns: str
) -> None:
    """A response whose id or fingerprint is not a plain short name is served and stored like
    any answer, but indexes nothing and names no fingerprint."""
    recorder, replayer = recorded
    hostile_id = "resp_" + "x" * 300
    answer = {
        "object": "response",
        "status": "completed",
        "output": [],
        "id": hostile_id,
        "system_fingerprint": "fp bad\\r\\nX-Evil: 1",
    }
    sim.fault(kind="status", status=200, body=answer)
    first = post(recorder, ns, {"model": MODEL, "input": INPUT})
    assert first.headers["X-Repro-Fingerprint"] == "none" and "X-Evil" not in first.headers
    again = post(replayer, ns, {"model": MODEL, "input": INPUT})
    assert again.headers["X-Repro-Cache"] == "HIT" and again.json() == answer
    fetched = httpx.get(
        replayer.v1 + f"/responses/{hostile_id}",
        headers={"Authorization": "Bearer sk-resp", "X-Repro-Namespace": ns},
    )
    assert fetched.status_code == 504
