"""A HIT names the upstream request that made its answer (`x-request-id`, the SDKs'
`_request_id`), as an HTTP cache sends an answer's stored headers again: through memory, Redis,
a stream, sound, a fetch by id and a cassette. An id no header may carry is never kept."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import orjson
import pytest
from openai import OpenAI

from tests.fixtures_procs import Proxy, ProxyFactory, Sim, free_port, replaying, run_cli, stopped
from tests.hostile import Scripted, completion, fixed, http_answer

OPENAI_ID = re.compile(r"req_[0-9a-f]{32}")
ASK = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Name a colour."}]}


def sdk(proxy: Proxy, ns: str = "") -> OpenAI:
    headers = {"X-Repro-Namespace": ns} if ns else {}
    return OpenAI(base_url=proxy.v1, api_key="sk-ids", max_retries=0, default_headers=headers)


def chat_ids(proxy: Proxy, content: str) -> tuple[str | None, str | None]:
    """The request ids the SDK reads from a MISS and then a HIT of the same request."""
    ask = {**ASK, "messages": [{"role": "user", "content": content}]}
    with sdk(proxy) as client:
        first = client.chat.completions.with_raw_response.create(**ask)  # type: ignore[call-overload]
        again = client.chat.completions.with_raw_response.create(**ask)  # type: ignore[call-overload]
    assert (first.headers["X-Repro-Cache"], again.headers["X-Repro-Cache"]) == ("MISS", "HIT")
    return first.request_id, again.request_id


def test_a_hit_names_the_request_that_made_its_answer(proxy: Proxy) -> None:
    made, served = chat_ids(proxy, "Name a colour.")
    assert made is not None and OPENAI_ID.fullmatch(made)
    assert served == made
    other, other_served = chat_ids(proxy, "Name a fruit.")
    assert other_served == other != made


def test_through_redis_too(start_proxy: ProxyFactory, redis_url: str) -> None:
    proxy = start_proxy("--store", redis_url, "--near-cache", "0")
    made, served = chat_ids(proxy, "Name a colour, from Redis.")
    assert made is not None and served == made


def test_a_streamed_hit_and_an_embedding_hit_name_theirs(proxy: Proxy, ns: str) -> None:
    with sdk(proxy, ns) as client:
        ids = []
        for _ in range(2):
            with client.chat.completions.with_streaming_response.create(
                **ASK, stream=True
            ) as stream:
                stream.read()
                ids.append((stream.headers["X-Repro-Cache"], stream.headers["x-request-id"]))
        assert [cache for cache, _ in ids] == ["MISS", "HIT"] and ids[0][1] == ids[1][1]
        made = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="x")
        served = client.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input="x"
        )
        assert served.headers["X-Repro-Cache"] == "HIT"
        assert served.request_id == made.request_id is not None


def test_speech_sent_as_it_comes_names_its_request_on_a_hit(proxy: Proxy, ns: str) -> None:
    asked = {"model": "gpt-4o-mini-tts", "input": "Hello.", "voice": "alloy"}
    headers = {"Authorization": "Bearer sk-ids", "X-Repro-Namespace": ns}
    answers = [httpx.post(proxy.v1 + "/audio/speech", json=asked, headers=headers) for _ in "ab"]
    assert [a.headers["X-Repro-Cache"] for a in answers] == ["MISS", "HIT"]
    assert answers[1].content == answers[0].content
    assert OPENAI_ID.fullmatch(answers[1].headers["x-request-id"])
    assert answers[1].headers["x-request-id"] == answers[0].headers["x-request-id"]


def test_a_response_fetched_by_id_in_replay_names_the_request_that_created_it(
    start_proxy: ProxyFactory, redis_url: str, ns: str
) -> None:
    shared = ("--store", redis_url, "--secret", "s3cret-of-16-bytes")
    recorder, replayer = start_proxy(*shared), start_proxy(*shared, "--cache-mode", "replay")
    created = sdk(recorder, ns).responses.with_raw_response.create(model="gpt-4o-mini", input="Hi")
    fetched = sdk(replayer, ns).responses.with_raw_response.retrieve(created.parse().id)
    assert fetched.headers["X-Repro-Cache"] == "HIT"
    assert fetched.request_id == created.request_id is not None


def test_a_cassette_keeps_the_id_and_replay_sends_it(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    with sdk(recorder) as client:
        made = client.chat.completions.with_raw_response.create(**ASK)  # type: ignore[call-overload]
    replayer = replaying(start_proxy, recorder, tape, "--cache-scope", "shared")
    (line,) = tape.read_text().splitlines()
    assert orjson.loads(line)["request_id"] == made.request_id
    with sdk(replayer) as client:
        served = client.chat.completions.with_raw_response.create(**ASK)  # type: ignore[call-overload]
    assert served.headers["X-Repro-Cache"] == "HIT"
    assert served.request_id == made.request_id


def test_a_cassette_line_whose_id_is_no_token_is_refused(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """A hand-edited line that would put a header of its own into every replayed answer."""
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    sdk(recorder).chat.completions.create(**ASK)  # type: ignore[call-overload]
    stopped(recorder)
    record = orjson.loads(tape.read_text())
    forged = tmp_path / "forged.jsonl"
    forged.write_bytes(orjson.dumps({**record, "request_id": "req_1\r\nSet-Cookie: a=b"}) + b"\n")
    replay = run_cli(
        "serve", "--cassette", str(forged), "--cache-scope", "shared", "--cache-mode", "replay",
        "--upstream", "http://127.0.0.1:9/v1", "--port", str(free_port()),
    )  # fmt: skip
    assert replay.returncode == 2, replay.stderr
    assert "cassette line 1: 'request_id' is not a request id" in replay.stderr
    assert "Set-Cookie" not in replay.stderr


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("x-request-id: " + "r" * 129, id="too-long"),
        pytest.param("x-request-id: req_1 <script>", id="not-a-token"),
        pytest.param("x-request-id: req_\u00e9t\u00e9", id="not-ascii"),
    ],
)
def test_an_id_no_header_should_carry_is_relayed_on_the_miss_never_kept(
    start_proxy: ProxyFactory, header: str
) -> None:
    """The MISS relays the upstream's headers as they came (those with control characters are
    dropped, as ever); the HIT names no request rather than one the proxy cannot vouch for."""
    answer = http_answer(completion("Blue."), "Content-Type: application/json", header)
    with Scripted(fixed(answer)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        asked = {"Authorization": "Bearer sk-ids"}
        first, again = (
            httpx.post(proxy.v1 + "/chat/completions", json=ASK, headers=asked) for _ in "ab"
        )
        assert (first.headers["X-Repro-Cache"], again.headers["X-Repro-Cache"]) == ("MISS", "HIT")
        assert "x-request-id" not in again.headers
        assert len(upstream.received) == 1
