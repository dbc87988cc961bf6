"""The official OpenAI JS SDK (Node, tests/js) through a real proxy and the sim: a Node
application changes only `baseURL`, as a Python one does, and shares the cache with it.

Node's fetch adds headers the Python SDK never sends (`Accept-Language: *`, `Sec-Fetch-Mode`);
the JS SDK asks embeddings as base64 unless told otherwise, streams through fetch, and reads
`x-should-retry` on its own. `.ci/run` installs the SDK (`npm ci --prefix tests/js`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.fixtures_procs import Proxy, ProxyFactory, Sim

JS = Path(__file__).resolve().parent.parent / "js"
KEY = "sk-node-app"


def node_flow(proxy: Proxy, flow: str) -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "openai").is_dir():
        pytest.fail("the JS SDK is not installed: run .ci/run, or npm ci --prefix tests/js")
    environment = {"PATH": os.environ["PATH"], "OPENAI_BASE_URL": proxy.v1, "OPENAI_API_KEY": KEY}
    done = subprocess.run(
        [node, str(JS / "flows.mjs"), flow],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=JS,
        env=environment,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_node_application_is_cached_as_a_python_one(proxy: Proxy, sim: Sim) -> None:
    with OpenAI(base_url=proxy.v1, api_key=KEY, max_retries=0) as sdk:  # Python asks first
        first = sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Name a colour."}]
        )
    assert first.headers["X-Repro-Cache"] == "MISS"
    calls = node_flow(proxy, "readwrite")
    by_call: dict[str, list[dict[str, Any]]] = {}
    for call in calls:
        by_call.setdefault(call["call"], []).append(call)

    # The Python SDK's answer, under its key: Node's headers leave the key as it was.
    assert [c["cache"] for c in by_call["chat"]] == ["HIT", "HIT"]
    assert {c["key"] for c in by_call["chat"]} == {first.headers["X-Repro-Key"]}
    assert by_call["chat"][0]["content"] == first.parse().choices[0].message.content
    # The SDK's `_request_id` names the request that made the answer, Python's, on each HIT.
    assert [c["id"] for c in by_call["chat"]] == [first.request_id] * 2 and first.request_id
    stream, embedding = by_call["stream"], by_call["embedding"]
    assert [c["cache"] for c in stream] == ["MISS", "HIT"]
    assert stream[0]["content"] and stream[0]["content"] == stream[1]["content"]
    assert [c["cache"] for c in embedding] == ["MISS", "HIT"]
    assert len(embedding[0]["vector"]) > 1 and embedding[0]["vector"] == embedding[1]["vector"]
    [response] = by_call["response"]
    assert response["cache"] == "MISS" and response["fetched"] == response["id"]
    assert response["text"]
    # Three upstream calls for four questions asked twice: the colour was Python's.
    asked = [r["path"] for r in sim.llm_requests()]
    assert asked == [
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/responses",
    ]
    sent = sim.llm_requests()[1]["headers"]
    assert sent.get("Accept-Language") == "*"  # forwarded as sent: only the key leaves it out


def test_a_node_upload_shares_its_transcript_with_a_python_one(proxy: Proxy, sim: Sim) -> None:
    """Node's fetch writes a form its own way (its boundary, its part headers): the upload is
    keyed by what it holds, so the Python SDK's, of another filename, is the same question."""
    flow = node_flow(proxy, "transcribe")
    calls = [c for c in flow if c["call"] == "transcription"]
    assert [c["cache"] for c in calls] == ["MISS", "HIT"]
    assert calls[0]["text"] and calls[0]["text"] == calls[1]["text"]
    clip = b"ID3 a clip a Python test uploads too"
    with OpenAI(base_url=proxy.v1, api_key=KEY, max_retries=0) as sdk:
        python = sdk.audio.transcriptions.with_raw_response.create(
            model="whisper-1", file=("recording.MP3", clip, "audio/mpeg")
        )
    assert python.headers["X-Repro-Cache"] == "HIT"
    assert python.headers["X-Repro-Key"] == calls[0]["key"]
    assert python.parse().text == calls[0]["text"]
    streamed = [c for c in flow if c["call"] == "streamed transcription"]
    assert [c["cache"] for c in streamed] == ["MISS", "HIT"]
    assert streamed[0]["text"] and streamed[0]["text"] == streamed[1]["text"]
    assert streamed[1]["deltas"].strip() == streamed[1]["text"]  # the SDK read every event
    assert [r["path"] for r in sim.llm_requests()] == ["/v1/audio/transcriptions"] * 2


def test_a_replay_miss_fails_a_node_call_once_with_the_proxys_error(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """The JS SDK retries a 504 twice unless told not to: the miss says `x-should-retry:
    false`, so the call fails at once with the OpenAI-shaped error, and the proxy is asked
    once."""
    tape = tmp_path / "llm.jsonl"
    tape.write_bytes(b"")
    proxy = start_proxy(
        "--cassette", str(tape), "--cache-scope", "shared", "--cache-mode", "replay"
    )
    [miss] = node_flow(proxy, "replay")
    assert miss == {"call": "miss", "status": 504, "code": "cache_miss", "type": miss["type"]}
    assert miss["type"]
    route = "/v1/chat/completions"
    assert proxy.metric("repro_requests_total", route=route, cache="error") == 1
    assert sim.llm_requests() == []


def test_a_node_suite_records_a_cassette_and_replays_it_offline(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """A Vitest or Jest suite's way (docs/operations.md, without pytest): record through a
    proxy with a cassette, then replay with no upstream: every call the same, a HIT, the
    response's fetch by id too."""
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy("--cassette", str(tape), "--cache-scope", "shared")
    recorded = node_flow(recorder, "readwrite")
    recorder.proc.send_signal(signal.SIGTERM)
    assert recorder.proc.wait(timeout=15) == 0
    sim.reset()
    replayer = start_proxy(
        "--cassette", str(tape), "--cache-scope", "shared", "--cache-mode", "replay"
    )
    replayed = node_flow(replayer, "readwrite")
    assert [call["cache"] for call in replayed] == ["HIT"] * len(recorded)
    for before, after in zip(recorded, replayed, strict=True):
        assert {**before, "cache": "HIT"} == after
    assert sim.requests() == []


def test_repro_proxy_run_records_and_replays_a_node_command(tmp_path: Path, sim: Sim) -> None:
    """`repro-proxy run -- node ...`, as a Node suite's CI runs it: recorded once, replayed
    with no key and no upstream, the same answers."""
    node = shutil.which("node")
    assert node is not None and (JS / "node_modules" / "openai").is_dir()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("REPRO_", "OPENAI_"))}
    tape = str(tmp_path / "llm.jsonl")
    command = ["--", node, str(JS / "flows.mjs"), "readwrite"]

    def run(*flags: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
        keyed = {"OPENAI_API_KEY": key} if key else {}
        return subprocess.run(
            [sys.executable, "-m", "proxy", "run", "--cassette", tape, *flags, *command],
            capture_output=True,
            text=True,
            timeout=90,
            cwd=JS,
            env=environ | keyed,
            check=False,
        )

    recorded = run("--record-mode", "once", "--upstream", sim.v1, key=KEY)
    assert recorded.returncode == 0, recorded.stderr
    sim.reset()
    replayed = run()
    assert replayed.returncode == 0, replayed.stderr
    before = [json.loads(line) for line in recorded.stdout.splitlines()]
    after = [json.loads(line) for line in replayed.stdout.splitlines()]
    assert [call["cache"] for call in after] == ["HIT"] * len(before)
    assert [{**call, "cache": "HIT"} for call in before] == after
    assert sim.requests() == []
