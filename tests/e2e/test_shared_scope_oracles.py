"""Attacks on `--cache-scope shared` by a caller without a valid key: it reads nothing, and it
must not learn either whether someone asked a question before (an answer stored) or is asking
it now (a fill in flight). Only what the upstream sees is compared, never timings."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import orjson

from tests.fixtures_procs import Proxy, ProxyFactory, Sim

GOOD = "sk-alice"


def chat(proxy: Proxy, key: str, prompt: str, timeout: float = 30) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    return httpx.post(
        proxy.v1 + "/chat/completions",
        content=orjson.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=timeout,
    )


def seen(requests: list[dict[str, Any]], key: str) -> list[tuple[str, str]]:
    """What the upstream received with `key`, in order."""
    return [
        (r["method"], r["path"])
        for r in requests
        if {k.lower(): v for k, v in r["headers"].items()}.get("authorization") == f"Bearer {key}"
    ]


def test_a_made_up_key_cannot_tell_a_stored_question_from_a_new_one(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    sim.accept_keys(GOOD)
    proxy = start_proxy("--cache-scope", "shared")
    assert chat(proxy, GOOD, "asked before").status_code == 200
    assert chat(proxy, GOOD, "asked before").headers["X-Repro-Cache"] == "HIT"
    stored = chat(proxy, "sk-mallory-1", "asked before")
    new = chat(proxy, "sk-mallory-2", "never asked")
    assert (stored.status_code, new.status_code) == (401, 401)
    assert stored.headers["X-Repro-Cache"] == new.headers["X-Repro-Cache"]
    requests = sim.requests()
    assert seen(requests, "sk-mallory-1") == seen(requests, "sk-mallory-2")


def test_a_made_up_key_does_not_wait_for_a_fill_of_its_question(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """A follower of an identical miss in flight waits for its leader: a caller whose key the
    upstream refuses must get its refusal at once, or the wait tells it someone is asking."""
    sim.accept_keys(GOOD)
    proxy = start_proxy("--cache-scope", "shared")
    assert chat(proxy, GOOD, "warm the key check").status_code == 200
    sim.settings(latency=6.0)  # a refusal comes before the latency; an answer after it
    leader: list[httpx.Response] = []
    filling = threading.Thread(target=lambda: leader.append(chat(proxy, GOOD, "asked now")))
    filling.start()
    try:
        for _ in range(200):  # bounded: until the leader's request reached the upstream
            if seen(sim.requests(), GOOD).count(("POST", "/v1/chat/completions")) == 2:
                break
            threading.Event().wait(0.05)
        refused = chat(proxy, "sk-mallory", "asked now", timeout=10)
        assert refused.status_code == 401
        assert filling.is_alive() and not leader  # answered while the fill still waits
    finally:
        sim.settings(latency=0.0)
        filling.join(30)
