"""Compactions (`POST /v1/responses/compact`, `client.responses.compact()`) are cached as
responses are: an agent that compacts its context (Codex does, once its context fills) replays
offline. The sim's compaction summary is drawn anew each call, so only a HIT repeats it; a
compaction continuing a response follows the chain rules of the Responses API."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest
from openai import OpenAI

from tests.fixtures_procs import Proxy, ProxyFactory, Sim, replaying
from tests.hostile import json_never_stored

KEY = "sk-agent"
TURNS = [
    {"role": "user", "content": "Plan a trip to Lisbon."},
    {"role": "assistant", "content": "Three days: Alfama, Belem, Sintra."},
    {"role": "user", "content": "Add a day trip."},
]
ASK = {"model": "gpt-5.4", "input": TURNS}
ROUTE = "/responses/compact"


def compact(sdk: OpenAI, **asked: object) -> tuple[str, str]:
    """The cache's word on one compaction, and its encrypted summary."""
    raw = sdk.responses.with_raw_response.compact(**{**ASK, **asked})  # type: ignore[arg-type]
    compaction = raw.parse()
    assert compaction.object == "response.compaction"
    summary = compaction.output[-1]
    assert summary.type == "compaction"
    return raw.headers["X-Repro-Cache"], summary.encrypted_content


def compactions(sim: Sim) -> list[dict[str, object]]:
    return [orjson.loads(r["body"]) for r in sim.llm_requests() if str(r["path"]).endswith(ROUTE)]


def test_the_sdk_gets_the_same_compaction_the_second_time(proxy: Proxy, sim: Sim) -> None:
    sdk = proxy.sdk(KEY)
    first, again = compact(sdk), compact(sdk)
    assert (first[0], again[0]) == ("MISS", "HIT")
    assert again[1] == first[1]
    other = compact(sdk, input=[*TURNS, {"role": "user", "content": "And a fifth?"}])
    assert other[0] == "MISS" and other[1] != first[1]
    assert len(compactions(sim)) == 2


def test_the_bookkeeping_labels_it_echoes_are_keyed_and_no_seed_is_added(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """A compaction echoes `safety_identifier`: an answer made for one end user is not handed
    to another. It takes no seed nor sampling parameters, even under `--enforce strict`."""
    proxy = start_proxy("--enforce", "strict")
    sdk = proxy.sdk(KEY)
    assert compact(sdk, safety_identifier="user-a")[0] == "MISS"
    assert compact(sdk, safety_identifier="user-b")[0] == "MISS"
    assert compact(sdk, safety_identifier="user-a")[0] == "HIT"
    sent = compactions(sim)
    assert len(sent) == 2
    assert all(body.keys() == {*ASK, "safety_identifier"} for body in sent)


def test_azures_v1_path_is_cached_alike(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy(upstream=sim.url)  # an Azure resource's root, no /v1
    url = proxy.url + "/openai/v1" + ROUTE + "?api-version=preview"
    answers = [httpx.post(url, json=ASK, headers={"api-key": KEY}, timeout=10) for _ in "ab"]
    assert [a.headers["X-Repro-Cache"] for a in answers] == ["MISS", "HIT"]
    assert answers[1].content == answers[0].content
    assert answers[0].json()["object"] == "response.compaction"
    (sent,) = compactions(sim)
    assert sent == ASK


def test_a_compaction_of_a_deleted_response_is_the_upstreams_to_answer(
    proxy: Proxy, sim: Sim
) -> None:
    """Continuing a response reads what the upstream keeps of it: once the upstream deleted
    it, the stored compaction is not served, and the upstream refuses, as without a proxy."""
    sdk = proxy.sdk(KEY)
    made = sdk.responses.create(model="gpt-4o-mini", input="Remember: the code is 7.")
    chained = {"model": "gpt-4o-mini", "previous_response_id": made.id}
    first = proxy.post(ROUTE, chained, key=KEY)
    again = proxy.post(ROUTE, chained, key=KEY)
    assert (first.headers["X-Repro-Cache"], again.headers["X-Repro-Cache"]) == ("MISS", "HIT")
    sdk.responses.delete(made.id)
    after = proxy.post(ROUTE, chained, key=KEY)
    assert after.status_code == 400
    assert after.json()["error"]["code"] == "previous_response_not_found"
    assert len(compactions(sim)) == 2


def test_a_cassette_replays_a_compaction_offline(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    recorded = compact(recorder.sdk(KEY))
    replayer = replaying(start_proxy, recorder, tape, "--cache-scope", "shared")
    assert orjson.loads(tape.read_text())["route"] == "/v1/responses/compact"
    assert compact(replayer.sdk("sk-ci")) == ("HIT", recorded[1])


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param({"error": {"message": "overloaded", "type": "server_error"}}, id="error"),
        pytest.param({"object": "response.compaction", "output": []}, id="nothing-compacted"),
        pytest.param({"object": "response", "output": [{"type": "message"}]}, id="a-response"),
        pytest.param({"object": "response.compaction", "output": "x"}, id="output-no-list"),
    ],
)
def test_a_200_that_is_no_compaction_is_relayed_and_never_stored(
    start_proxy: ProxyFactory, answer: dict[str, object]
) -> None:
    json_never_stored(start_proxy, answer, ROUTE, ASK, KEY)
