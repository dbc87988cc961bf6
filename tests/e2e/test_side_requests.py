"""The proxy's own requests (the drift sampler's re-ask, the prober's ping) against an upstream
that answers them badly: what they learn must be what the client path would learn from the same
answer, and the HITs they ride on must not change (real proxy and sim processes)."""

from __future__ import annotations

import httpx
import orjson

from bench.procs import settled
from proxy.server.probe import MAX_PROBED
from tests.fixtures_procs import Proxy, ProxyFactory, Sim

AUTH = {"Authorization": "Bearer sk-alice", "Content-Type": "application/json"}
MODEL = "gpt-4o-mini"
ERROR_WITH_200 = {
    "kind": "status",
    "status": 200,
    "body": {"error": {"message": "Rate limited.", "type": "rate_limit", "code": None}},
}


def ask(proxy: Proxy, content: str) -> str:
    answer = proxy.chat(content, model=MODEL, key="sk-alice")
    assert answer.status_code == 200
    return answer.headers["X-Repro-Cache"]


def verified(proxy: Proxy) -> float:
    """Drift checks done so far, whatever their result."""
    results = ("same", "differs", "rotated", "error")
    return sum(proxy.metric("repro_verify_total", model=MODEL, result=r) for r in results)


def test_a_200_error_answer_to_the_drift_re_ask_is_an_error_not_a_rotation(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy("--verify-rate", "1")
    assert (ask(proxy, "q0"), ask(proxy, "q1")) == ("MISS", "MISS")
    sim.fault(**ERROR_WITH_200, count=1)
    assert ask(proxy, "q0") == "HIT"
    assert settled(lambda: verified(proxy), lambda n: n >= 1) == 1
    assert proxy.metric("repro_verify_total", model=MODEL, result="error") == 1
    assert proxy.metric("repro_fingerprint_changes_total", model=MODEL) == 0
    assert ask(proxy, "q1") == "HIT"  # the model's answers were not all made stale


def test_the_drift_re_ask_reads_no_more_than_an_entry_may_hold(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """A fresh answer larger than --max-entry could never have been stored: it is an `error`,
    not read whole (up to the 32 MiB bound of the proxy's other side requests) and compared."""
    proxy = start_proxy("--verify-rate", "1", "--max-entry", "16384")
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "q0"}]})
    first = httpx.post(proxy.v1 + "/chat/completions", content=body, headers=AUTH, timeout=10)
    assert first.headers["X-Repro-Cache"] == "MISS"
    huge = first.json()
    huge["choices"][0]["message"]["content"] = "x" * 48_000
    sim.fault(kind="status", status=200, body=huge, count=1)
    assert ask(proxy, "q0") == "HIT"
    assert settled(lambda: verified(proxy), lambda n: n >= 1) == 1
    assert proxy.metric("repro_verify_total", model=MODEL, result="error") == 1


def test_a_200_error_answer_to_a_probe_teaches_no_fingerprint(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy("--probe-interval", "0.3", "--probe-key", "sk-probe")
    assert (ask(proxy, "x"), ask(proxy, "x")) == ("MISS", "HIT")
    sim.fault(**ERROR_WITH_200, count=1)
    before = len(sim.llm_requests())

    def probes() -> float:
        return len(sim.llm_requests()) - before

    # Probes run one after another: once a second was asked, the first (the faulted one) and
    # whatever it taught are done.
    assert settled(probes, lambda n: n >= 2) >= 2
    assert proxy.metric("repro_fingerprint_changes_total", model=MODEL) == 0
    assert ask(proxy, "x") == "HIT"


def test_the_probe_spends_its_key_on_a_bounded_number_of_models(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """Which models are probed is the clients' to choose (any model name an upstream serves):
    the operator's key asks for at most MAX_PROBED of them, the most recently requested."""
    proxy = start_proxy("--probe-interval", "0.3", "--probe-key", "sk-probe")
    models = [f"model-{number:03d}" for number in range(MAX_PROBED + 16)]
    with httpx.Client(timeout=10) as client:
        for model in models:
            body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "q"}]})
            headers = {**AUTH, "X-Request-ID": "req-client", "Cookie": "session=c"}
            answer = client.post(proxy.v1 + "/chat/completions", content=body, headers=headers)
            assert answer.status_code == 200

    def probes() -> list[str]:
        asked = sim.llm_requests()
        return [
            orjson.loads(r["body"])["model"]
            for r in asked
            if r["headers"].get("Authorization") == "Bearer sk-probe"
        ]

    assert settled(lambda: len(probes()), lambda n: n > 2 * MAX_PROBED) > 2 * MAX_PROBED
    assert set(probes()) == set(models[-MAX_PROBED:])
    probe_heads = [r["headers"] for r in sim.llm_requests() if "sk-probe" in str(r["headers"])]
    assert probe_heads
    assert not [h for h in probe_heads if {"X-Request-ID", "Cookie"} & set(h)]
    assert "sk-alice" not in str(probe_heads) and "req-client" not in str(probe_heads)
