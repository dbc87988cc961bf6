"""Moderations (`POST /v1/moderations`) are cached like embeddings: a chat app that screens its
input keeps its test suite offline in replay mode. The official SDK through a real proxy to the
sim, and an upstream written here to answer what no verdict is."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import orjson
import pytest
from openai import OpenAI

from tests.fixtures_procs import Proxy, ProxyFactory, Sim
from tests.hostile import Received, Scripted, http_answer, relayed_never_stored

KEY = "sk-moderated"


def client(proxy: Proxy) -> OpenAI:
    return proxy.sdk(KEY)


def moderate(proxy: Proxy, body: dict[str, object]) -> httpx.Response:
    return proxy.post("/moderations", body, key=KEY)


def test_the_sdk_gets_the_same_verdict_the_second_time_from_the_cache(
    proxy: Proxy, sim: Sim
) -> None:
    openai = client(proxy)
    first = openai.moderations.with_raw_response.create(input="a story of violence")
    again = openai.moderations.with_raw_response.create(input="a story of violence")
    assert (first.headers["X-Repro-Cache"], again.headers["X-Repro-Cache"]) == ("MISS", "HIT")
    verdict = again.parse()
    assert verdict.model_dump() == first.parse().model_dump()
    assert verdict.results[0].flagged and verdict.results[0].categories.violence
    assert verdict.model == "omni-moderation-2024-09-26"
    assert again.headers["X-Repro-Fingerprint"] == "omni-moderation-2024-09-26"
    (asked,) = [r for r in sim.requests() if r["path"] == "/v1/moderations"]
    assert "seed" not in orjson.loads(asked["body"])  # a moderation takes no seed
    assert "X-Repro-Seed" not in again.headers
    clean = openai.moderations.with_raw_response.create(input="a story of kittens")
    assert clean.headers["X-Repro-Cache"] == "MISS" and not clean.parse().results[0].flagged
    assert proxy.metric("repro_cache_hits_total", model="omni-moderation-latest") == 1


def test_the_default_model_named_or_left_out_is_one_key_and_other_models_are_not(
    proxy: Proxy, sim: Sim
) -> None:
    left_out = moderate(proxy, {"input": ["one", "two"]})
    named = moderate(proxy, {"input": ["one", "two"], "model": "omni-moderation-latest"})
    other = moderate(proxy, {"input": ["one", "two"], "model": "text-moderation-latest"})
    assert [r.headers["X-Repro-Cache"] for r in (left_out, named, other)] == [
        "MISS",
        "HIT",
        "MISS",
    ]
    assert len(named.json()["results"]) == 2
    assert left_out.headers["X-Repro-Key"] == named.headers["X-Repro-Key"]
    assert other.json()["model"] == "text-moderation-007"


def test_a_recorded_verdict_replays_offline(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    image = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    recorded = client(recorder).moderations.create(input=image, model="omni-moderation-latest")
    unnamed = client(recorder).moderations.create(input="no model named")
    recorder.proc.send_signal(signal.SIGTERM)
    assert recorder.proc.wait(timeout=15) == 0
    sim.reset()
    replaying = start_proxy(
        "--cache-scope", "shared", "--cassette", str(tape), "--cache-mode", "replay",
        upstream="http://127.0.0.1:9/v1",
    )  # fmt: skip
    replayed = client(replaying).moderations.create(input=image, model="omni-moderation-latest")
    assert replayed.model_dump() == recorded.model_dump()
    assert replayed.results[0].category_applied_input_types.violence == ["image", "text"]
    assert client(replaying).moderations.create(input="no model named") == unnamed
    missed = moderate(replaying, {"input": "never recorded"})
    assert missed.status_code == 504 and missed.json()["error"]["code"] == "cache_miss"


@pytest.mark.parametrize(
    "answer",
    [
        {"error": {"message": "overloaded"}, "results": []},
        {"id": "modr-1", "model": "m", "results": "flagged"},
        {"id": "modr-1", "model": "m", "results": []},
        {"id": "modr-1", "model": "m", "results": [{"flagged": "no", "categories": {}}]},
        {"id": "modr-1", "model": "m", "results": [{"flagged": False}]},
    ],
    ids=["error", "not-a-list", "empty", "flag-not-bool", "no-categories"],
)
def test_an_answer_that_is_no_verdict_is_relayed_and_never_stored(
    start_proxy: ProxyFactory, answer: dict[str, object]
) -> None:
    """A gateway's error sent with 200, or results a client cannot read: stored, every later
    caller would get it for as long as the entry lived."""
    json = ("Content-Type: application/json",)
    relayed_never_stored(
        start_proxy, orjson.dumps(answer), json, lambda proxy: moderate(proxy, {"input": "x"})
    )


def test_a_new_snapshot_behind_the_alias_is_a_rotation(start_proxy: ProxyFactory) -> None:
    """`omni-moderation-latest` answers as a dated snapshot, which names the weights that
    judged: when the alias moves, verdicts of the old one are no longer served (`follow`)."""
    snapshot = ["omni-moderation-2024-09-26"]

    async def answer(writer: asyncio.StreamWriter, _: Received) -> None:
        verdict = {"flagged": False, "categories": {"hate": False}}
        body = orjson.dumps({"id": "modr-1", "model": snapshot[0], "results": [verdict]})
        writer.write(http_answer(body, "Content-Type: application/json"))
        await writer.drain()

    with Scripted(answer) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        first = moderate(proxy, {"input": "first"})
        assert first.headers["X-Repro-Fingerprint"] == "omni-moderation-2024-09-26"
        assert moderate(proxy, {"input": "first"}).headers["X-Repro-Cache"] == "HIT"
        snapshot[0] = "omni-moderation-2026-11-30"
        other = moderate(proxy, {"input": "other"})
        assert other.headers["X-Repro-Fingerprint"] == "omni-moderation-2026-11-30"
        again = moderate(proxy, {"input": "first"})
        assert again.headers["X-Repro-Cache"] == "MISS"
        assert again.json()["model"] == "omni-moderation-2026-11-30"
        assert len(upstream.received) == 3
        lineage = "omni-moderation-latest@moderations"
        assert proxy.metric("repro_fingerprint_changes_total", model=lineage) == 1
