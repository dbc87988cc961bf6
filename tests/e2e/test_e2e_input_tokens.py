"""Token counts (`POST /v1/responses/input_tokens`, `client.responses.input_tokens.count()`)
are cached: an agent that measures its context before sending it replays offline, where replay
refused the pass-through. A count that reads state the key cannot name is never cached."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.fixtures_procs import Proxy, ProxyFactory, Sim, replaying
from tests.hostile import json_never_stored

KEY = "sk-agent"
ASK = {
    "model": "gpt-5.4",
    "input": "How many tokens is this question?",
    "instructions": "Be brief.",
}
ROUTE = "/responses/input_tokens"


def count(proxy: Proxy, key: str = KEY, **asked: object) -> tuple[str, int]:
    tokens = proxy.sdk(key).responses.input_tokens
    raw = tokens.with_raw_response.count(**{**ASK, **asked})  # type: ignore[arg-type]
    counted = raw.parse()
    assert counted.object == "response.input_tokens"
    return raw.headers["X-Repro-Cache"], counted.input_tokens


def counts(sim: Sim) -> int:
    return len([r for r in sim.llm_requests() if str(r["path"]).endswith(ROUTE)])


def test_the_same_count_is_a_hit_and_another_input_a_miss(proxy: Proxy, sim: Sim) -> None:
    first, again = count(proxy), count(proxy)
    assert (first[0], again[0]) == ("MISS", "HIT") and first[1] == again[1] == 8
    assert count(proxy, input="Shorter.") == ("MISS", 3)
    assert counts(sim) == 2


def test_a_count_in_a_conversation_is_never_cached(proxy: Proxy, sim: Sim) -> None:
    """A conversation grows with each answer: the same body counts more tokens each time."""
    states = [count(proxy, conversation="conv_1")[0] for _ in range(2)]
    assert states == ["BYPASS", "BYPASS"] and counts(sim) == 2


def test_a_cassette_replays_a_count_offline(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    recorded = count(recorder)
    replayer = replaying(start_proxy, recorder, tape, "--cache-scope", "shared")
    assert orjson.loads(tape.read_text())["route"] == "/v1/responses/input_tokens"
    assert count(replayer, key="sk-ci") == ("HIT", recorded[1])


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param({"error": {"message": "overloaded", "type": "server_error"}}, id="error"),
        pytest.param({"object": "response.input_tokens", "input_tokens": "9"}, id="text"),
        pytest.param({"object": "response.input_tokens", "input_tokens": -9}, id="negative"),
        pytest.param({"object": "list", "data": [{"input_tokens": 9}]}, id="a-list"),
    ],
)
def test_a_200_that_is_no_count_is_relayed_and_never_stored(
    start_proxy: ProxyFactory, answer: dict[str, object]
) -> None:
    json_never_stored(start_proxy, answer, ROUTE, ASK, KEY)
