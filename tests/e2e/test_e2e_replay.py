"""Replay never reaches the upstream, serves every recorded fingerprint, and a miss is final;
`--port 0` binds a free port and says which."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import APIStatusError, InternalServerError, OpenAI

from bench.procs import stop as stop_process
from bench.procs import wait_until_up
from tests.fixtures_procs import Proxy, ProxyFactory, Sim, _clean_env, started

ASK = [{"role": "user", "content": "Replay me."}]


def stop(proxy: Proxy) -> None:
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(timeout=15) == 0


def ask(proxy: Proxy, content: str = "Replay me.") -> httpx.Response:
    return httpx.post(
        proxy.v1 + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]},
        headers={"Authorization": "Bearer sk-ci"},
        timeout=10,
    )


def record(start_proxy: ProxyFactory, tape: Path, sim: Sim, *fingerprints: str) -> list[str]:
    """One answer per fingerprint, each to its own prompt; their contents, in order."""
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    contents = []
    for number, fingerprint in enumerate(fingerprints):
        sim.set_fingerprint(fingerprint)
        answer = ask(recorder, f"Prompt {number}.")
        assert answer.headers["X-Repro-Fingerprint"] == fingerprint
        contents.append(answer.json()["choices"][0]["message"]["content"])
    stop(recorder)
    return contents


def replayer(start_proxy: ProxyFactory, tape: Path, *flags: str) -> Proxy:
    return start_proxy(
        "--cache-scope", "shared", "--cassette", str(tape), "--cache-mode", "replay", *flags
    )


def test_replay_with_the_upstream_up_sends_it_nothing(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    record(start_proxy, tape, sim, "fp_sim_0001")
    sim.reset()
    proxy = replayer(
        start_proxy, tape, "--verify-rate", "1", "--probe-interval", "0.05", "--probe-key", "sk-p"
    )
    assert ask(proxy, "Prompt 0.").headers["X-Repro-Cache"] == "HIT"
    unread = httpx.get(proxy.v1 + "/models", headers={"Authorization": "Bearer k"})
    assert unread.status_code == 504  # a read, which this recording did not make
    assert unread.json()["error"]["code"] == "cache_miss"
    for method, path in [("POST", "/files"), ("DELETE", "/files/f-1")]:
        refused = httpx.request(method, proxy.v1 + path, headers={"Authorization": "Bearer k"})
        assert refused.status_code == 501
        assert refused.headers["x-should-retry"] == "false"
        error = refused.json()["error"]
        assert error["code"] == "replay_passthrough"
        assert path in error["message"]
    assert ask(proxy, "Not recorded.").status_code == 504
    time.sleep(0.5)  # ten probe intervals: a probe or a drift check would have been sent by now
    assert ask(proxy, "Prompt 0.").headers["X-Repro-Cache"] == "HIT"
    assert sim.requests() == []


def test_a_miss_is_final_for_the_sdk_and_names_route_and_model(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    record(start_proxy, tape, sim, "fp_sim_0001")
    proxy = replayer(start_proxy, tape)
    client = OpenAI(base_url=proxy.v1, api_key="sk-ci")  # the SDK's default: 2 retries
    with pytest.raises(InternalServerError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=ASK)
    assert raised.value.response.headers["x-should-retry"] == "false"
    message = raised.value.body["message"]  # type: ignore[index]
    assert "/v1/chat/completions" in message
    assert "gpt-4o-mini" in message
    assert raised.value.response.headers["X-Repro-Key"] in message
    assert proxy.metric("repro_requests_total", route="/v1/chat/completions", cache="error") == 1
    with pytest.raises(APIStatusError) as refused:
        client.files.delete("file-1")
    assert (refused.value.status_code, refused.value.code) == (501, "replay_passthrough")
    assert proxy.metric("repro_requests_total", route="/v1/*", cache="error") == 1


def test_a_miss_is_logged_at_info_without_the_prompt(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    record(start_proxy, tape, sim, "fp_sim_0001")
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = start_proxy(
            "--cache-scope", "shared", "--cassette", str(tape), "--cache-mode", "replay",
            stderr=sink,
        )  # fmt: skip
        assert ask(proxy, "A secret prompt.").status_code == 504
        long_model = httpx.post(
            proxy.v1 + "/chat/completions",
            json={"model": "m" * 100_000, "messages": ASK},
            headers={"Authorization": "Bearer sk-ci"},
            timeout=10,
        )
        assert long_model.status_code == 504
        assert len(long_model.content) < 1000  # a hostile model name is not echoed whole
        stop(proxy)
    text = log.read_text()
    lines = [line for line in text.splitlines() if "cache miss" in line]
    assert len(lines) == 2
    assert '"level":"info"' in lines[0]
    assert '"route":"/v1/chat/completions"' in lines[0]
    assert '"model":"gpt-4o-mini"' in lines[0]
    assert "A secret prompt." not in text
    assert max(len(line) for line in text.splitlines()) < 5000


def test_a_cassette_recorded_across_rotations_replays_every_answer(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    recorded = record(start_proxy, tape, sim, "fp_A", "fp_B", "fp_A")
    proxy = replayer(start_proxy, tape)
    rotation = ["fp_A", "fp_B", "fp_A"]
    for number, (content, fingerprint) in enumerate(zip(recorded, rotation, strict=True)):
        answer = ask(proxy, f"Prompt {number}.")
        assert answer.headers["X-Repro-Cache"] == "HIT"
        assert answer.headers["X-Repro-Fingerprint"] == fingerprint
        assert answer.json()["choices"][0]["message"]["content"] == content
    following = replayer(start_proxy, tape, "--fingerprint-policy", "follow")
    assert ask(following, "Prompt 1.").status_code == 504  # a policy set by the user stands
    assert ask(following, "Prompt 2.").headers["X-Repro-Cache"] == "HIT"


def test_port_0_binds_a_free_port_and_says_which(sim: Sim, tmp_path: Path) -> None:
    serve = [sys.executable, "-m", "proxy", "serve", "--port", "0", "--upstream", sim.v1]
    proxy, proxy_url = started(serve, tmp_path / "serve.log")
    sim_argv = [sys.executable, "-m", "proxy", "sim", "--port", "0"]
    simulated, sim_url = started(sim_argv, tmp_path / "sim.log")
    try:
        assert not proxy_url.endswith(":0") and not sim_url.endswith(":0")
        wait_until_up(proxy_url + "/healthz", proxy)
        assert httpx.get(sim_url + "/_sim/fingerprint").json()["fingerprint"] == "fp_sim_0001"
        log = (tmp_path / "serve.log").read_text()
        assert f'"url":"{proxy_url}"' in log  # the JSON listening line names the port too
    finally:
        stop_process(proxy)
        stop_process(simulated)


def test_port_0_with_several_workers_is_refused_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--port", "0", "--workers", "2",
         "--store", "redis://127.0.0.1:6390/0"],
        capture_output=True, text=True, timeout=30, env=_clean_env(), check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--port / REPRO_PORT" in result.stderr and "--workers 1" in result.stderr
