"""Smoke run of the throughput benchmark (bench/bench.py --short --json).

It checks that the benchmark runs end to end and that its verification passed (every hit
workload answered HIT, no answer >= 400, no socket error), and the shape of its results. It
asserts no speed: CI machines are noisy. wrk and redis-server are required, not optional: a
missing one fails with the command that installs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench_module import load_bench

ROOT = Path(__file__).resolve().parents[2]
NO_NEAR = "proxy redis:// no near-cache"  # --near-cache 0: one Redis round trip per hit
HIT_WORKLOADS = {
    "hit (memory)": ("proxy memory://", "dict floor"),
    "hit (Redis)": ("proxy redis://", "redis-GET floor"),
    "hit (Redis, near-cache off)": (NO_NEAR, "redis-GET floor"),
    "hit many keys (memory)": ("proxy memory://", "dict floor"),
    "hit many keys (Redis)": ("proxy redis://", "redis-GET floor"),
    "hit many keys (Redis, near-cache off)": (NO_NEAR, "redis-GET floor"),
    "streaming hit (memory)": ("proxy memory://", "dict floor"),
    "streaming hit (Redis)": ("proxy redis://", "redis-GET floor"),
}
MISS_WORKLOADS = {
    "miss (memory)": ("proxy memory://", "pass-through floor"),
    "miss (Redis)": ("proxy redis://", "pass-through floor"),
}
# Measured against the redis-GET floor: their ratio kind, target, and gateway ratios.
REDIS_HIT_KINDS = {
    "hit (Redis)": ("redis", 1.0),
    "hit (Redis, near-cache off)": ("redis_no_near", 0.7),
    "hit many keys (Redis)": ("redis", 1.0),
    "hit many keys (Redis, near-cache off)": ("redis_no_near", 0.7),
    "streaming hit (Redis)": ("redis", 1.0),
}
FIGURES = ("req_s", "p50_ms", "p99_ms", "cpu_us_per_req")


@pytest.fixture(scope="module")
def result() -> dict[str, object]:
    for tool, package in (("wrk", "wrk"), ("redis-server", "redis-server")):
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool} not found on PATH: the benchmark smoke test needs it. "
                f"Install it with: apt-get install {package}"
            )
    done = subprocess.run(
        [sys.executable, "bench/bench.py", "--short", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.stdout.strip(), f"no JSON on stdout (exit {done.returncode}):\n{done.stderr}"
    data: dict[str, object] = json.loads(done.stdout)
    assert done.returncode == (0 if data["ok"] else 1), done.stderr
    return data


@pytest.mark.timeout(180)
def test_verification_passed(result: dict[str, object]) -> None:
    assert result["errors"] == [], result["errors"]
    assert result["ok"] is True
    assert result["mode"] == "short"


@pytest.mark.timeout(180)
def test_every_workload_measured_proxy_and_floor(result: dict[str, object]) -> None:
    runs = result["runs"]
    assert isinstance(runs, list)
    assert all(set(run) >= {*FIGURES, "retried_after", "verified"} for run in runs)
    by_key = {(run["workload"], run["target"]): run for run in runs}
    for workload, (proxy, floor) in {**HIT_WORKLOADS, **MISS_WORKLOADS}.items():
        for target in (proxy, floor):
            run = by_key[(workload, target)]
            assert run["ok"] is True, f"{workload} | {target}: {run['error']}"
            assert run["requests"] > 0
            for name in FIGURES:
                assert isinstance(run[name], float) and run[name] > 0, (workload, target, name)
            assert run["p99_ms"] >= run["p50_ms"]
            assert not any(run["wrk_errors"].values()), run["wrk_errors"]
            assert run["verified"], run
        proxy_run = by_key[(workload, proxy)]
        assert proxy_run["role"] == "proxy" and proxy_run["floor"] == floor
        for name in ("ratio_floor", "cpu_ratio_floor", "ratio_gateway"):
            assert isinstance(proxy_run[name], float) and proxy_run[name] > 0, proxy_run
        expected = "hit" if workload in HIT_WORKLOADS else "miss"
        assert f" {expected}, nothing else" in proxy_run["verified"], proxy_run["verified"]
    for workload in ("hit (Redis)", "hit many keys (Redis)"):
        # Redis's own CPU is reported; with the near-cache a hit may not touch Redis at all (0).
        assert isinstance(by_key[(workload, "proxy redis://")]["aux_cpu_us_per_req"], float)
    for workload in ("hit (Redis, near-cache off)", "hit many keys (Redis, near-cache off)"):
        # Without the near-cache every hit is a Redis round trip: redis-server does work.
        aux = by_key[(workload, NO_NEAR)]["aux_cpu_us_per_req"]
        assert isinstance(aux, float) and aux > 0, (workload, aux)
    # A Redis miss's helpers are the sim and redis-server, reported apart and summed.
    split = by_key[("miss (Redis)", "proxy redis://")]["aux_cpu_us_by_process"]
    assert set(split) == {"sim", "redis-server"} and split["redis-server"] > 0, split
    total = by_key[("miss (Redis)", "proxy redis://")]["aux_cpu_us_per_req"]
    assert total == pytest.approx(sum(split.values()))


@pytest.mark.timeout(180)
def test_ratios_and_reference(result: dict[str, object]) -> None:
    ratios = result["ratios"]
    assert isinstance(ratios, list)
    assert {r["workload"] for r in ratios} == set(HIT_WORKLOADS) | set(MISS_WORKLOADS)
    for ratio in ratios:
        for name in ("ratio_floor", "cpu_ratio_floor", "ratio_gateway"):
            assert isinstance(ratio[name], float) and ratio[name] > 0, ratio
        assert "ratio_gateway_scaled" in ratio, ratio
        if ratio["workload"] in REDIS_HIT_KINDS:
            kind, target = REDIS_HIT_KINDS[ratio["workload"]]
            assert ratio["ratio_kind"] == kind and ratio["target_floor"] == target, ratio
            assert ratio["target_gateway"] == (50 if kind == "redis" else None), ratio
            assert ratio["reference_floor_rps"] == 13_000, ratio
            # proxy / (150 x floor / 13,000), next to the unscaled proxy / 150
            scaled = ratio["ratio_gateway_scaled"]
            expected = ratio["ratio_gateway"] * 13_000 / ratio["floor_rps"]
            assert isinstance(scaled, float) and scaled == pytest.approx(expected), ratio
        else:
            assert ratio["ratio_gateway_scaled"] is None, ratio
            assert ratio["target_gateway"] is None, ratio
    reference = result["reference"]
    assert isinstance(reference, dict)
    assert reference["popular Python LLM gateway + Redis"]["hit_rps"] == 150


@pytest.mark.timeout(180)
def test_ratio_table(result: dict[str, object]) -> None:
    """The printed table (bench.table of the JSON): the near-cache-off target, and the gateway
    ratio scaled to this machine, labelled as such, next to the raw one for each Redis hit."""
    lines = load_bench().table(result).splitlines()
    for workload, (kind, target) in REDIS_HIT_KINDS.items():
        floor_line = next(x for x in lines if x.startswith(f"{workload}: proxy / redis-GET floor"))
        assert floor_line.endswith(f">= {target:.1f}x"), floor_line
        raw = [x for x in lines if x.startswith(f"{workload}: proxy / popular gateway ")]
        if kind == "redis":  # the 50x target is the default proxy's, near-cache on
            assert len(raw) == 1 and raw[0].endswith(">= 50x"), raw
        else:
            assert raw == [], raw
        scaled = next(
            x for x in lines if x.startswith(f"{workload}: proxy / popular gateway, scaled")
        )
        assert "(scaled by floor " in scaled and scaled.endswith("/13,000)"), scaled
    assert not any("scaled" in x for x in lines if x.startswith("hit (memory): proxy"))


@pytest.mark.timeout(180)
def test_streaming_miss_ttfb(result: dict[str, object]) -> None:
    ttfb = result["ttfb"]
    assert isinstance(ttfb, dict) and ttfb["ok"] is True, ttfb
    assert ttfb["direct"]["p50_ms"] > 0
    floor = ttfb["pass-through floor"]
    assert floor["floor"] is True and floor["p50_ms"] > 0
    relay = ttfb["byte relay"]  # a hop below HTTP: only the loopback and one more process
    assert relay["floor"] is True and relay["p50_ms"] > 0 and "paired_delta_p50_ms" in relay
    for proxy in ("proxy memory://", "proxy redis://"):
        assert ttfb[proxy]["p50_ms"] > 0
        assert "paired_delta_p50_ms" in ttfb[proxy]
        over = ttfb[proxy]["p50_ms"] - floor["p50_ms"]
        assert ttfb[proxy]["over_floor_p50_ms"] == pytest.approx(over)
