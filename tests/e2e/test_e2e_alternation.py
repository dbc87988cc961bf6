"""End to end: an upstream that answers with several fingerprints at random (a fleet mid-rollout)
does not thrash the cache under the default flap window, and a real rotation is still followed.
Every change of the current fingerprint, back included, is counted and logged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from bench.procs import stop
from tests.fixtures_procs import Proxy, ProxyFactory, Sim

MODEL = "gpt-4o-mini"
PROMPTS = 40  # fewer than 3 moves back in 39 fair flips: probability below 1e-7


def ask(client: httpx.Client, index: int) -> tuple[str, str]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"question {index}"}],
        "seed": 7,
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    return response.headers["X-Repro-Cache"], response.headers["X-Repro-Fingerprint"]


def client(proxy: Proxy) -> httpx.Client:
    return httpx.Client(base_url=proxy.url, headers={"Authorization": "Bearer sk-a"}, timeout=10)


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_alternation_keeps_every_answer_and_a_real_rotation_is_followed(
    start_proxy: ProxyFactory, sim: Sim, store: str, request: pytest.FixtureRequest
) -> None:
    flags = ["--store", request.getfixturevalue("redis_url")] if store == "redis" else []
    proxy = start_proxy(*flags)
    sim.control("POST", "fingerprint", {"fingerprints": ["fp_a", "fp_b"]})
    with client(proxy) as http:
        first = [ask(http, i) for i in range(PROMPTS)]
        assert {cache for cache, _ in first} == {"MISS"}
        assert {fingerprint for _, fingerprint in first} == {"fp_a", "fp_b"}
        assert proxy.metric("repro_fingerprint_alternating", model=MODEL) == 1
        assert [ask(http, i) for i in range(PROMPTS)] == [("HIT", fp) for _, fp in first]

        sim.set_fingerprint("fp_c")
        assert ask(http, PROMPTS) == ("MISS", "fp_c")  # teaches the proxy the rotation
        assert [ask(http, i) for i in range(PROMPTS)] == [("MISS", "fp_c")] * PROMPTS
    flaps = proxy.metric("repro_fingerprint_flaps_total", model=MODEL)
    changes = proxy.metric("repro_fingerprint_changes_total", model=MODEL)
    assert flaps >= 3
    assert changes == flaps + 2  # the two rotations to fp_b's first answer and to fp_c


def test_a_rotation_back_is_logged_as_rotated_back_and_counted(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = start_proxy(stderr=sink)
    with client(proxy) as http:
        assert ask(http, 0) == ("MISS", "fp_sim_0001")
        sim.set_fingerprint("fp_sim_0002")
        assert ask(http, 1) == ("MISS", "fp_sim_0002")
        sim.set_fingerprint("fp_sim_0001")
        assert ask(http, 2) == ("MISS", "fp_sim_0001")
    assert proxy.metric("repro_fingerprint_changes_total", model=MODEL) == 2
    assert proxy.metric("repro_fingerprint_flaps_total", model=MODEL) == 1
    stop(proxy.proc)
    raw = log.read_bytes().splitlines()
    lines = [orjson.loads(line) for line in raw if line.startswith(b"{")]  # not "listening on"
    told = [(x["msg"], x["old"], x["new"]) for x in lines if x["msg"].startswith("fingerprint")]
    assert [x["change"] for x in lines if x["msg"].startswith("fingerprint")] == [
        "rotated",
        "rotated back",
    ]
    assert told == [
        ("fingerprint rotated", "fp_sim_0001", "fp_sim_0002"),
        ("fingerprint rotated back", "fp_sim_0002", "fp_sim_0001"),
    ]
