"""End to end: /metrics counts the traffic exactly, health routes answer, logs stay clean JSON."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from bench.procs import stop
from tests.fixtures_procs import Proxy, ProxyFactory, Sim, free_port, running_proxy
from tests.fixtures_redis import running_redis

MODEL = "gpt-4o-mini"
CHAT = "/v1/chat/completions"
FP1, FP2 = "fp_sim_0001", "fp_sim_0002"
API_KEY = "sk-obs-Kq72Zr-must-not-be-logged"
PROMPT = "Describe the saffron-narwhal-9043 protocol in one line."

FAMILIES = {
    "repro_requests": "counter",
    "repro_cache_hits": "counter",
    "repro_cache_misses": "counter",
    "repro_seed_injected": "counter",
    "repro_fingerprint_changes": "counter",
    "repro_fingerprint_info": "gauge",
    "repro_tokens_saved": "counter",
    "repro_request_duration_seconds": "histogram",
    "repro_upstream_duration_seconds": "histogram",
    "repro_store_errors": "counter",
}

Labels = frozenset[tuple[str, str]]


def chat(proxy: Proxy, prompt: str, **params: Any) -> Any:
    """One chat completion through the SDK; the raw response, body already read."""
    with OpenAI(base_url=proxy.v1, api_key=API_KEY, max_retries=0) as sdk:
        return sdk.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], **params
        )


def post(proxy: Proxy, body: bytes, path: str = CHAT) -> httpx.Response:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    return httpx.post(proxy.url + path, content=body, headers=headers, timeout=10)


def labels(**values: str) -> Labels:
    return frozenset(values.items())


def series(text: str, sample: str) -> dict[Labels, float]:
    """Every sample called `sample`, by its label set."""
    return {
        frozenset(s.labels.items()): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample
    }


def test_every_metric_family_counts_the_traffic_exactly(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    with running_redis(tmp_path / "redis") as server:
        proxy = start_proxy("--store", server.url)
        assert httpx.get(proxy.url + "/readyz", timeout=5).status_code == 200
        first = chat(proxy, "Question A.")
        hits = [chat(proxy, "Question A.") for _ in range(3)]
        chat(proxy, "Question B.", seed=7)
        sim.set_fingerprint(FP2)
        chat(proxy, "Question C.")
        assert post(proxy, b'{"model": ').status_code == 400
    # The store is gone: the next request is served from the upstream and counted as a MISS.
    assert chat(proxy, "Question A.").headers["X-Repro-Cache"] == "MISS"
    assert httpx.get(proxy.url + "/readyz", timeout=5).status_code == 503

    assert [hit.headers["X-Repro-Cache"] for hit in hits] == ["HIT"] * 3
    usage = first.parse().usage
    text = proxy.metrics()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name, kind in FAMILIES.items():
        assert families[name].type == kind, name
        assert families[name].samples, name

    outcomes = {labels(route=CHAT, cache=c): n for c, n in (("miss", 4), ("hit", 3), ("error", 1))}
    assert series(text, "repro_requests_total") == outcomes
    assert series(text, "repro_request_duration_seconds_count") == outcomes
    assert series(text, "repro_upstream_duration_seconds_count") == {
        labels(route=CHAT, status="200"): 4
    }
    assert series(text, "repro_cache_hits_total") == {labels(model=MODEL): 3}
    assert series(text, "repro_cache_misses_total") == {labels(model=MODEL): 4}
    assert series(text, "repro_seed_injected_total") == {labels(model=MODEL): 6}
    assert series(text, "repro_tokens_saved_total") == {
        labels(model=MODEL, type="prompt"): 3 * usage.prompt_tokens,
        labels(model=MODEL, type="completion"): 3 * usage.completion_tokens,
    }
    assert series(text, "repro_fingerprint_changes_total") == {labels(model=MODEL): 1}
    assert series(text, "repro_fingerprint_info") == {
        labels(model=MODEL, fingerprint=FP1): 0,
        labels(model=MODEL, fingerprint=FP2): 1,
    }
    assert series(text, "repro_store_errors_total") == {
        labels(op="get"): 1,
        labels(op="fingerprint"): 1,
        labels(op="put"): 1,
    }


def test_an_upstream_that_never_answers_counts_as_what_the_client_gets(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """Unreachable counts as 502 and timed out as 504 in the upstream histogram, streamed or
    not, so that the upstream error ratio (and its alert) sees a dead upstream."""
    down = start_proxy(upstream=f"http://127.0.0.1:{free_port()}/v1")
    slow = start_proxy("--upstream-timeout", "0.3")
    for stream in (False, True):
        body = orjson.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        )
        assert post(down, body).status_code == 502
        sim.fault(kind="hang")
        assert post(slow, body).status_code == 504
    assert series(down.metrics(), "repro_upstream_duration_seconds_count") == {
        labels(route=CHAT, status="502"): 2
    }
    assert series(slow.metrics(), "repro_upstream_duration_seconds_count") == {
        labels(route=CHAT, status="504"): 2
    }


def test_health_routes_on_the_memory_store(proxy: Proxy) -> None:
    for route in ("/healthz", "/readyz"):
        response = httpx.get(proxy.url + route, timeout=5)
        assert (response.status_code, response.json()) == (200, {"status": "ok"})


@contextmanager
def logged_proxy(sim: Sim, log: Path, *flags: str) -> Iterator[Proxy]:
    """A proxy at the default log level whose stderr goes to `log`; stopped on exit."""
    with log.open("wb") as sink, running_proxy(sim.v1, *flags, stderr=sink) as proxy:
        yield proxy


def json_lines(log: Path) -> list[dict[str, Any]]:
    raw = log.read_bytes()
    assert API_KEY.encode() not in raw
    assert PROMPT.encode() not in raw
    assert b"saffron-narwhal" not in raw
    lines = [orjson.loads(line) for line in raw.splitlines() if line.strip()]
    for line in lines:
        assert isinstance(line, dict)
        assert {"ts", "level", "logger", "msg"} <= line.keys(), line
    return lines


def test_logs_are_json_without_the_api_key_or_the_prompt(sim: Sim, tmp_path: Path) -> None:
    memory_log, dead_log = tmp_path / "memory.log", tmp_path / "dead.log"
    # Access lines are debug-level (they cost ~10% of a HIT); debug must not leak secrets either.
    with logged_proxy(sim, memory_log, "--log-level", "debug") as proxy:
        chat(proxy, PROMPT)
        chat(proxy, PROMPT)
        chat(proxy, PROMPT, extra_headers={"Cache-Control": "no-cache"})
        sim.set_fingerprint(FP2)
        chat(proxy, PROMPT, seed=3)
        with OpenAI(base_url=proxy.v1, api_key=API_KEY, max_retries=0) as sdk:
            sdk.completions.create(model="davinci-002", prompt=PROMPT)
            sdk.embeddings.create(model="text-embedding-3-small", input=PROMPT)
            sdk.models.list()
            for _ in sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
            ):
                pass
        message = orjson.dumps({"role": "user", "content": PROMPT})
        assert post(proxy, b'{"messages": [' + message).status_code == 400
        assert post(proxy, b'{"seed": "x", "messages": [' + message + b"]}").status_code == 400
        sim.fault(kind="status", status=429, headers={"Retry-After": "1"})
        assert post(proxy, b'{"model": "m", "messages": [' + message + b"]}").status_code == 429
    dead_store = f"redis://127.0.0.1:{free_port()}/0"
    with logged_proxy(sim, dead_log, "--store", dead_store, "--log-level", "debug") as dead:
        chat(dead, PROMPT)

    memory = json_lines(memory_log)
    assert sum(line["msg"] == "request" for line in memory) == 11
    assert any(line["msg"] == "fingerprint rotated" for line in memory)
    dead_lines = json_lines(dead_log)
    assert sum(line["msg"] == "request" for line in dead_lines) == 1
    # The dead store is logged when it fails and when the circuit opens, not on every call.
    assert any(line["msg"] == "store circuit opened" for line in dead_lines)
    assert any(line["msg"] == "store failed, serving without it" for line in dead_lines)


def test_a_failed_upstream_is_logged_by_route_never_by_the_clients_path(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """A pass-through path is the client's to write, a few KiB of anything; each request while
    the upstream is down makes a warning, which names the route, not the path."""
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = start_proxy(upstream=f"http://127.0.0.1:{free_port()}/v1", stderr=sink)
        marker = "client-chosen-" + "words-" * 200
        answer = httpx.get(f"{proxy.v1}/files/{marker}", timeout=10)
        assert answer.status_code == 502
        stop(proxy.proc)
    lines = json_lines(log)
    failed = [line for line in lines if line["msg"] == "upstream failed"]
    assert [line["route"] for line in failed] == ["/v1/{tail}"]
    assert "client-chosen" not in log.read_text()
