"""`repro-proxy rotations --model M` against a running proxy shows every lineage of M: its
plain requests', and each fleet's a keyed header routes (`M@fleet-…`), each named whole.

Before: `--model` (the admin route's `?model=`) matched the lineage's name exactly, so a
rotation of M's fleet never showed, and a narrow table cut the lineage short."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import httpx
import orjson
from rich.console import Console

from proxy.tools.rotations_view import render
from tests.fixtures_procs import ProxyFactory, Sim

MODEL = "gpt-4o-mini"
OTHER = "gpt-4.1"
ADMIN = "admin-token-for-tests"
ROUTED = {"Authorization": "Bearer sk-a", "x-portkey-provider": "fleet-b"}
PLAIN = {"Authorization": "Bearer sk-a"}
FLEET = re.compile(re.escape(MODEL) + r"@fleet-[0-9a-f]{16}")


def ask(http: httpx.Client, model: str, prompt: str, headers: dict[str, str]) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "seed": 3}
    answer = http.post("/v1/chat/completions", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.headers["X-Repro-Fingerprint"]


def rotations(url: str, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "rotations", "--url", url, "--admin-token", ADMIN, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = orjson.loads(done.stdout)
    return report


def test_rotations_of_a_model_show_its_fleets_lineages(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy("--admin-token", ADMIN)
    asked = [(MODEL, PLAIN), (MODEL, ROUTED), (OTHER, PLAIN)]
    with httpx.Client(base_url=proxy.url, timeout=10) as http:
        for model, headers in asked:
            assert ask(http, model, "before", headers) == "fp_sim_0001"
        sim.set_fingerprint("fp_sim_0002")
        for model, headers in asked:  # a new request each: its answer teaches the rotation
            assert ask(http, model, "after", headers) == "fp_sim_0002"

    report = rotations(proxy.url, "--model", MODEL, "--json")
    models = report["models"]
    assert isinstance(models, dict)
    (fleet,) = [lineage for lineage in models if FLEET.fullmatch(lineage)]
    assert sorted(models) == sorted([MODEL, fleet])
    for lineage in (MODEL, fleet):
        assert models[lineage]["model"] == MODEL
        (rotation,) = models[lineage]["rotations"]
        assert (rotation["from"], rotation["to"]) == ("fp_sim_0001", "fp_sim_0002")

    only_fleet = rotations(proxy.url, "--model", fleet, "--json")["models"]
    assert isinstance(only_fleet, dict) and list(only_fleet) == [fleet]
    assert sorted(rotations(proxy.url, "--json")["models"]) == sorted([MODEL, fleet, OTHER])

    report["distance_kind"] = "text"
    console = Console(file=io.StringIO(), width=80)
    render(report, console)
    table = console.file.getvalue().splitlines()
    first = [line.split("│")[1].strip() for line in table if line.startswith("│")]
    assert fleet in "".join(first)  # whole (folded), on a narrow terminal too
