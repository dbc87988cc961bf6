"""Smoke run of the pinned benchmark (bench/pinned.py): it measures the proxy and its floor, and
another checkout with `--against`, each on a core of its own, and refuses what it cannot measure.
Timings are the dated ones in docs/performance.md; the test asserts shape, not speed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed"),
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores"),
]


def pinned(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "bench/pinned.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def figures(*args: str) -> dict[str, Any]:
    done = pinned("--json", "--rounds", "1", "--seconds", "1", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def test_a_pass_through_run_measures_the_proxy_against_its_floor() -> None:
    result = figures("passthrough")
    servers = result["servers"]
    assert list(servers) == ["floor", "proxy"]
    for figures_of in servers.values():
        (us,) = figures_of["cpu_us_per_req"]
        assert 0 < us < 100_000
    assert servers["floor"]["floor_over_it"] == 1.0
    ratio = servers["floor"]["median"] / servers["proxy"]["median"]
    assert servers["proxy"]["floor_over_it"] == pytest.approx(ratio)


def test_another_checkout_is_measured_beside_this_one_on_hits() -> None:
    result = figures("hit", "--against", str(ROOT))
    assert list(result["servers"]) == ["floor", "proxy", f"proxy ({ROOT})"]
    assert all(s["median"] > 0 for s in result["servers"].values())


def test_one_core_is_refused_with_the_reason() -> None:
    taskset = shutil.which("taskset")
    if taskset is None:
        pytest.skip("taskset is not installed")
    done = pinned("miss", prefix=(taskset, "-c", "0"))
    assert done.returncode != 0
    assert "needs two cores" in done.stderr
    assert done.stdout == ""


def test_zero_rounds_are_refused() -> None:
    done = pinned("miss", "--rounds", "0")
    assert done.returncode == 2
    assert "--rounds and --seconds must be at least 1" in done.stderr
