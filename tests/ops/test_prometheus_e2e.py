"""End to end: a real Prometheus scrapes a real proxy and evaluates deploy/prometheus/rules.

Prometheus (Debian package `prometheus`) runs on a free loopback port with its storage in a tmp
dir, scraping `repro-proxy serve` every second and evaluating the repository's rule files every
second. Traffic through the proxy to `repro-proxy sim`, with two fingerprint rotations, is then
read back with PromQL through Prometheus's HTTP API: the rotations, the current fingerprint, the
hit ratio of the recording rules and the fingerprint alert. Every wait is bounded.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai import OpenAI

from tests.fixtures_procs import Proxy, ProxyFactory, Sim, free_port, stop
from tests.ops.test_deploy import RULE_FILES, exported_series

MODEL = "gpt-4o-mini"
FP1, FP2, FP3 = "fp_sim_0001", "fp_sim_0002", "fp_sim_0003"
START_TIMEOUT = 15.0
WAIT = 30.0

Result = list[dict[str, Any]]


@dataclass
class Prometheus:
    url: str

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> Result:
        return list(self.api("query", query=expr)["result"])

    def wait_for(self, expr: str, done: Callable[[Result], bool]) -> Result:
        """Query until `done` holds for the result; fail with the last result after WAIT s."""
        deadline = time.monotonic() + WAIT
        while True:
            result = self.query(expr)
            if done(result):
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"{expr} still gives {result} after {WAIT}s")
            time.sleep(0.25)


def value(result: Result) -> float | None:
    """The value of a one-series result; None when there is no series (or several)."""
    return float(result[0]["value"][1]) if len(result) == 1 else None


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[Proxy], Prometheus]]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed (Debian package prometheus)"
    started: list[subprocess.Popen[bytes]] = []

    def start(proxy: Proxy) -> Prometheus:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in RULE_FILES],
            "scrape_configs": [
                {
                    "job_name": "repro-proxy",
                    "static_configs": [{"targets": [f"127.0.0.1:{proxy.port}"]}],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        argv = [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
        with (tmp_path / "prometheus.log").open("wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        started.append(proc)
        prometheus = Prometheus(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + START_TIMEOUT
        while not _ready(prometheus):
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            time.sleep(0.1)
        return prometheus

    try:
        yield start
    finally:
        for proc in started:
            stop(proc)


def _ready(prometheus: Prometheus) -> bool:
    try:
        return httpx.get(prometheus.url + "/-/ready", timeout=0.5).status_code == 200
    except httpx.TransportError:
        return False


def chat(proxy: Proxy, prompt: str) -> tuple[str, str]:
    with OpenAI(base_url=proxy.v1, api_key="sk-prometheus", max_retries=0) as sdk:
        response = sdk.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}]
        )
    return response.headers["X-Repro-Cache"], response.headers["X-Repro-Fingerprint"]


def test_prometheus_reads_rotations_fingerprint_hit_ratio_and_alert_from_the_proxy(
    start_proxy: ProxyFactory, sim: Sim, start_prometheus: Callable[[Proxy], Prometheus]
) -> None:
    proxy = start_proxy()
    prometheus = start_prometheus(proxy)
    model = f'model="{MODEL}"'

    assert chat(proxy, "First question.") == ("MISS", FP1)
    assert chat(proxy, "First question.") == ("HIT", FP1)
    prometheus.wait_for(f"repro_cache_hits_total{{{model}}}", lambda r: value(r) == 1)

    sim.set_fingerprint(FP2)
    assert chat(proxy, "Second question.") == ("MISS", FP2)
    prometheus.wait_for(f"repro_fingerprint_changes_total{{{model}}}", lambda r: value(r) == 1)
    sim.set_fingerprint(FP3)
    assert chat(proxy, "Third question.") == ("MISS", FP3)
    for _ in range(6):
        assert chat(proxy, "Third question.") == ("HIT", FP3)

    # two rotations: the counter, its increase, and the recording rule (born at 1, now 2)
    prometheus.wait_for(f"repro_fingerprint_changes_total{{{model}}}", lambda r: value(r) == 2)
    rotations = prometheus.query(f"increase(repro_fingerprint_changes_total{{{model}}}[1m]) > 0")
    assert len(rotations) == 1 and float(rotations[0]["value"][1]) >= 1
    recorded = f"model:repro_fingerprint_changes:increase15m{{{model}}}"
    prometheus.wait_for(recorded, lambda r: value(r) == 2)

    # the current fingerprint, and the older ones at 0
    (current,) = prometheus.query(f"repro_fingerprint_info{{{model}}} == 1")
    assert current["metric"]["fingerprint"] == FP3
    older = prometheus.query(f"repro_fingerprint_info{{{model}}} == 0")
    assert sorted(s["metric"]["fingerprint"] for s in older) == [FP1, FP2]

    # since the first scrape: 6 more hits and 2 more misses. Both counters were scraped at the
    # same instants, so once enough samples are in, rate() extrapolates them alike: 6 / 8
    for ratio in ("model:repro_cache_hit_ratio:rate5m", "repro:cache_hit_ratio:rate5m"):
        prometheus.wait_for(ratio, lambda r: value(r) == pytest.approx(0.75, rel=1e-12))

    # the alert names the new fingerprint (one for FP2 may have fired and resolved meanwhile)
    firing = 'ALERTS{alertname="ReproFingerprintChanged", alertstate="firing"}'
    alerting = [(MODEL, FP3)]
    prometheus.wait_for(
        firing,
        lambda r: [(a["metric"]["model"], a["metric"]["fingerprint"]) for a in r] == alerting,
    )

    assert_rules_evaluate_cleanly(prometheus)
    assert_scraped_series_are_exported(prometheus)


def assert_rules_evaluate_cleanly(prometheus: Prometheus) -> None:
    """Every rule of the repository loaded and evaluated without an error on the real series."""
    deadline = time.monotonic() + WAIT
    while True:
        rules = [r for group in prometheus.api("rules")["groups"] for r in group["rules"]]
        if rules and not any(r["lastEvaluation"].startswith("0001-") for r in rules):
            break
        assert time.monotonic() < deadline, "rules were not evaluated"
        time.sleep(0.25)
    expected = {r.get("record") or r.get("alert") for f in RULE_FILES for r in _rules(f)}
    assert {rule["name"] for rule in rules} == expected
    failing = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert failing == []


def assert_scraped_series_are_exported(prometheus: Prometheus) -> None:
    """The names test_deploy derives from proxy.metrics are the ones /metrics really shows."""
    counted = prometheus.query('count by (__name__) ({job="repro-proxy"})')
    scraped = {
        s["metric"]["__name__"] for s in counted if s["metric"]["__name__"].startswith("repro_")
    }
    assert "repro_fingerprint_info" in scraped
    assert scraped <= set(exported_series()), scraped - set(exported_series())


def _rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]
