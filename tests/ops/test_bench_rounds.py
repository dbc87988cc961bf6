"""bench/bench.py --rounds: every workload measured several times, the ratios as medians.

One real run (two rounds of "hit (memory)" and "streaming hit (memory)", short) shows the order
alternating and each proxy run compared with its floor's run of the same round; the pairing and
the medians are then checked on constructed runs, where the right answer is known.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.bench_module import load_bench

ROOT = Path(__file__).resolve().parents[2]


bench = load_bench("bench_rounds")


@pytest.fixture(scope="module")
def two_rounds() -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable, "bench/bench.py", "--short", "--json", "--rounds", "2",
            "--only", "hit (memory)",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=150, check=False,
    )  # fmt: skip
    assert done.stdout.strip(), f"no JSON on stdout (exit {done.returncode}):\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == 0 and result["ok"], result["errors"]
    return result


@pytest.mark.timeout(160)
def test_rounds_alternate_which_target_goes_first(two_rounds: dict[str, Any]) -> None:
    order = [
        (r["round"], r["target"]) for r in two_rounds["runs"] if r["workload"] == "hit (memory)"
    ]
    assert order == [
        (1, "dict floor"),
        (1, "proxy memory://"),
        (2, "proxy memory://"),
        (2, "dict floor"),
    ]
    assert all(run["ok"] and run["req_s"] > 0 for run in two_rounds["runs"])


@pytest.mark.timeout(160)
def test_each_round_is_compared_with_its_own_floor(two_rounds: dict[str, Any]) -> None:
    runs = {
        (r["round"], r["target"]): r for r in two_rounds["runs"] if r["workload"] == "hit (memory)"
    }
    per_round = [r for r in two_rounds["ratios"] if r["workload"] == "hit (memory)"]
    assert [r["round"] for r in per_round] == [1, 2]
    for line in per_round:
        proxy, floor = runs[(line["round"], "proxy memory://")], runs[(line["round"], "dict floor")]
        assert line["ratio_floor"] == pytest.approx(proxy["req_s"] / floor["req_s"])
    assert [m["workload"] for m in two_rounds["medians"]] == [
        "hit (memory)",
        "streaming hit (memory)",
    ]
    median = two_rounds["medians"][0]
    assert median["rounds"] == [r["ratio_floor"] for r in per_round]
    assert median["ratio_floor"] == pytest.approx(sum(median["rounds"]) / 2)
    table = bench.table(two_rounds)
    assert "ratio (median of 2 rounds)" in table
    assert "proxy memory:// #2" in table


@pytest.mark.timeout(160)
def test_one_round_prints_as_before(two_rounds: dict[str, Any]) -> None:
    """The default (--rounds 1) has no medians and no round labels in its table."""
    first = [r for r in two_rounds["runs"] if r["round"] == 1]
    single = {**two_rounds, "rounds": 1, "medians": None, "runs": first}
    single["ratios"] = [r for r in two_rounds["ratios"] if r["round"] == 1]
    table = bench.table(single)
    assert "ratio (same run)" in table and "#1" not in table and "by round" not in table


def run(workload: str, target: str, role: str, number: int, req_s: float, **links: Any) -> Any:
    made = bench.Run(workload, target, role, number, ok=True, req_s=req_s, **links)
    made.cpu_us_per_req = 1e6 / req_s
    return made


def test_pairing_by_round_and_medians_of_three() -> None:
    proxy = {"floor": "floor", "ratio_kind": "miss"}
    runs = [
        run("miss", "floor", "floor", 1, 1000.0),
        run("miss", "proxy", "proxy", 1, 900.0, **proxy),
        run("miss", "proxy", "proxy", 2, 700.0, **proxy),
        run("miss", "floor", "floor", 2, 1000.0),
        run("miss", "floor", "floor", 3, 500.0),
        run("miss", "proxy", "proxy", 3, 400.0, **proxy),
    ]
    summary = bench.ratios(runs)
    assert [(s["round"], s["ratio_floor"]) for s in summary] == [
        (1, pytest.approx(0.9)),
        (2, pytest.approx(0.7)),
        (3, pytest.approx(0.8)),
    ]
    (median,) = bench.medians(summary)
    assert median["ratio_floor"] == pytest.approx(0.8)
    assert median["cpu_ratio_floor"] == pytest.approx(0.8)  # CPU/req is 1e6 / req_s here
    assert median["ratio_gateway"] == pytest.approx(700 / bench.GATEWAY_MISS_RPS)
    assert median["rounds"] == [pytest.approx(0.9), pytest.approx(0.7), pytest.approx(0.8)]
    assert median["target_floor"] == 0.7 and median["round"] is None


def test_a_failed_floor_round_gives_no_ratio_and_is_left_out_of_the_median() -> None:
    proxy = {"floor": "floor", "ratio_kind": "memory"}
    failed = bench.Run("hit", "floor", "floor", 2, error="wrk completed no request")
    runs = [
        run("hit", "floor", "floor", 1, 1000.0),
        run("hit", "proxy", "proxy", 1, 600.0, **proxy),
        failed,
        run("hit", "proxy", "proxy", 2, 900.0, **proxy),
    ]
    summary = bench.ratios(runs)
    assert [s["ratio_floor"] for s in summary] == [pytest.approx(0.6), None]
    (median,) = bench.medians(summary)
    assert median["ratio_floor"] == pytest.approx(0.6)
    assert median["rounds"] == [pytest.approx(0.6), None]


def test_the_gateway_summary_quotes_the_ratio_tables_median() -> None:
    """Its ratio is the median of same-round ratios, as in the table, not a ratio of medians."""
    workload, proxy = bench.GATEWAY_HIT_WORKLOAD, {"floor": "floor", "ratio_kind": "redis"}
    runs = []
    for number, (floor_rps, proxy_rps, gateway_rps) in enumerate(
        [(1000.0, 1500.0, 10.0), (1000.0, 1000.0, 20.0), (1000.0, 2000.0, 40.0)], start=1
    ):
        runs += [
            run(workload, "floor", "floor", number, floor_rps),
            run(workload, "proxy", "proxy", number, proxy_rps, **proxy),
            run(workload, "LiteLLM", "gateway", number, gateway_rps),
        ]
    lines = bench.medians(bench.ratios(runs))
    install = SimpleNamespace(venv=Path("/v"), install_s=1.0, venv_mib=1.0, reused=True)
    summary = bench.gateway_summary(install, runs, lines)
    assert [line["ratio_gateway"] for line in bench.ratios(runs)] == [150.0, 50.0, 50.0]
    assert summary["ratio_redis_hit"] == pytest.approx(50.0)  # 1500 / 20 would be 75
    assert summary["hit_rps"] == 20.0 and summary["proxy_redis_hit_rps"] == 1500.0
