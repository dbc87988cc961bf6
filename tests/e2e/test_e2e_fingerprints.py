"""End to end: the proxy follows the upstream's system_fingerprint (policy, grace, admin, metrics).

The proxy learns a model's fingerprint only from upstream answers, so a rotation at the upstream
becomes visible to it through a request that reaches the upstream; until then the stored answers
of the old fingerprint are still the current ones.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from openai import OpenAI

from bench.procs import settled
from proxy.core.fingerprints import FINGERPRINTS_KEPT, MAX_MODEL_NAME
from tests.fixtures_procs import Proxy, ProxyFactory, Sim

MODEL = "gpt-4o-mini"
PROMPT = "Say something reproducible."
FP1, FP2 = "fp_sim_0001", "fp_sim_0002"
ADMIN = "admin-token-for-tests"
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def chat(proxy: Proxy, prompt: str = PROMPT, **params: Any) -> Any:
    """One chat completion through the SDK; the raw response, body already read."""
    with OpenAI(base_url=proxy.v1, api_key="sk-alice", max_retries=0) as sdk:
        return sdk.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], **params
        )


def outcome(response: Any) -> tuple[str, str]:
    return response.headers["X-Repro-Cache"], response.headers["X-Repro-Fingerprint"]


def rotate(sim: Sim, proxy: Proxy, fingerprint: str, prompt: str) -> None:
    """Rotate the upstream and let the proxy see it through a request it has never stored."""
    sim.set_fingerprint(fingerprint)
    assert outcome(chat(proxy, prompt)) == ("MISS", fingerprint)


def admin_get(proxy: Proxy, **headers: str) -> httpx.Response:
    return httpx.get(proxy.url + "/admin/fingerprints", headers=headers, timeout=5)


def parse_time(text: str) -> float:
    assert RFC3339_UTC.fullmatch(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def test_follow_serves_only_the_current_fingerprint(proxy: Proxy, sim: Sim) -> None:
    """Default policy follow, default grace 0: a rotation makes older entries unservable."""
    miss = chat(proxy)
    hit = chat(proxy)
    assert outcome(miss) == ("MISS", FP1)
    assert outcome(hit) == ("HIT", FP1)
    assert hit.http_response.content == miss.http_response.content

    sim.set_fingerprint(FP2)
    # Nothing told the proxy yet: the stored answer is still of the current fingerprint.
    assert outcome(chat(proxy)) == ("HIT", FP1)
    rotate(sim, proxy, FP2, "Another question.")
    fresh = chat(proxy)
    assert outcome(fresh) == ("MISS", FP2)
    assert fresh.http_response.content != miss.http_response.content
    again = chat(proxy)
    assert outcome(again) == ("HIT", FP2)
    assert again.http_response.content == fresh.http_response.content

    # Back to the first fingerprint: it is current again, so its stored entry is servable again.
    rotate(sim, proxy, FP1, "A third question.")
    back = chat(proxy)
    assert outcome(back) == ("HIT", FP1)
    assert back.http_response.content == miss.http_response.content
    assert len(sim.llm_requests()) == 4
    # Every change of the current fingerprint counts, the return to FP1 too (also as a flap).
    assert proxy.metric("repro_fingerprint_changes_total", model=MODEL) == 2
    assert proxy.metric("repro_fingerprint_flaps_total", model=MODEL) == 1
    assert proxy.metric("repro_fingerprint_info", model=MODEL, fingerprint=FP1) == 1
    assert proxy.metric("repro_fingerprint_info", model=MODEL, fingerprint=FP2) == 0


def test_pin_serves_entries_of_older_fingerprints(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy("--fingerprint-policy", "pin")
    miss = chat(proxy)
    rotate(sim, proxy, FP2, "Another question.")
    pinned = chat(proxy)
    assert outcome(pinned) == ("HIT", FP1)
    assert pinned.http_response.content == miss.http_response.content
    # With entries of two fingerprints under one key, pin serves the newest one.
    refreshed = chat(proxy, extra_headers={"Cache-Control": "no-cache"})
    assert outcome(refreshed) == ("REFRESH", FP2)
    newest = chat(proxy)
    assert outcome(newest) == ("HIT", FP2)
    assert newest.http_response.content == refreshed.http_response.content
    assert len(sim.llm_requests()) == 3


@pytest.mark.parametrize(
    ("grace", "served"), [("30", ("HIT", FP1)), ("0", ("MISS", FP2))], ids=["grace-30", "grace-0"]
)
def test_grace_keeps_a_recently_answering_fingerprint_current(
    start_proxy: ProxyFactory, sim: Sim, grace: str, served: tuple[str, str]
) -> None:
    proxy = start_proxy("--fingerprint-grace", grace)
    miss = chat(proxy)
    rotate(sim, proxy, FP2, "Another question.")
    response = chat(proxy)
    assert outcome(response) == served
    if served[0] == "HIT":
        assert response.http_response.content == miss.http_response.content
    assert len(sim.llm_requests()) == 2 + (served[0] == "MISS")


def test_null_fingerprint_is_called_none_and_still_cached(proxy: Proxy, sim: Sim) -> None:
    sim.set_fingerprint(None)
    miss = chat(proxy)
    hit = chat(proxy)
    assert outcome(miss) == ("MISS", "none")
    assert outcome(hit) == ("HIT", "none")
    assert hit.http_response.content == miss.http_response.content
    assert miss.parse().system_fingerprint is None
    assert len(sim.llm_requests()) == 1
    assert proxy.metric("repro_fingerprint_info", model=MODEL, fingerprint="none") == 1
    assert admin_get(proxy).status_code == 404
    assert admin_get(proxy, Authorization="Bearer anything").status_code == 404


def test_admin_fingerprints_and_fingerprint_metrics(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy("--admin-token", ADMIN)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN}):
        refused = admin_get(proxy, **headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"

    began = int(time.time())
    chat(proxy)
    assert proxy.metric("repro_fingerprint_changes_total", model=MODEL) == 0
    assert proxy.metric("repro_fingerprint_info", model=MODEL, fingerprint=FP1) == 1
    rotate(sim, proxy, FP2, "Another question.")
    ended = time.time()
    assert proxy.metric("repro_fingerprint_changes_total", model=MODEL) == 1
    assert proxy.metric("repro_fingerprint_info", model=MODEL, fingerprint=FP1) == 0
    assert proxy.metric("repro_fingerprint_info", model=MODEL, fingerprint=FP2) == 1

    response = admin_get(proxy, Authorization=f"Bearer {ADMIN}")
    assert response.status_code == 200
    report = response.json()
    assert list(report) == [MODEL]
    state = report[MODEL]
    assert state["current"] == FP2
    history = state["history"]
    assert [item["fingerprint"] for item in history] == [FP1, FP2]
    first_seen = [parse_time(item["first_seen"]) for item in history]
    assert began <= first_seen[0] <= first_seen[1] <= ended
    assert state["first_seen"] == history[1]["first_seen"]
    assert first_seen[1] <= parse_time(state["last_seen"]) <= ended
    # The auth scheme is case-insensitive (RFC 9110, 11.1), as it is for the API key.
    assert admin_get(proxy, Authorization=f"bearer {ADMIN}").status_code == 200


def test_counts_are_exact_once_repeats_reach_the_store(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str
) -> None:
    """Repeats of the current fingerprint are counted in the proxy and written to Redis within
    a second, as one observation: the admin route's count is then exact."""
    proxy = start_proxy("--store", redis_url, "--admin-token", ADMIN)
    for n in range(6):
        assert outcome(chat(proxy, f"question {n}"))[0] == "MISS"

    def count() -> int:
        report = admin_get(proxy, Authorization=f"Bearer {ADMIN}").json()
        return int(report[MODEL]["history"][0]["count"])

    # the repeats are flushed after a second
    assert settled(count, lambda n: n == 6, within=5, pause=0.1) == 6


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_an_upstream_naming_a_new_fingerprint_each_time_fills_no_unbounded_history(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, store: str
) -> None:
    """A hostile (or broken) upstream answering with a new fingerprint every time: the model's
    state, which every lookup reads, keeps FINGERPRINTS_KEPT of them, the current one among
    them, and each new one is still followed."""
    where = redis_url if store == "redis" else "memory://"
    proxy = start_proxy("--store", where, "--admin-token", ADMIN)
    names = [f"fp_hostile_{index:03d}" for index in range(FINGERPRINTS_KEPT + 8)]
    try:
        for index, name in enumerate(names):
            rotate(sim, proxy, name, f"{PROMPT} {index}")
    finally:
        sim.set_fingerprint(FP1)
    state = admin_get(proxy, Authorization=f"Bearer {ADMIN}").json()[MODEL]
    shown = [item["fingerprint"] for item in state["history"]]
    assert shown == names[-FINGERPRINTS_KEPT:]
    assert state["current"] == names[-1]


@pytest.mark.parametrize("stream", [False, True])
def test_a_model_named_longer_than_any_real_one_is_passed_through_and_kept_nowhere(
    start_proxy: ProxyFactory, stream: bool
) -> None:
    """A client names its model freely, as long as its body: each new name used to be state
    kept for good (a process held every name of a megabyte it was sent, whatever --store's
    bound). Such a model is answered, but neither its fingerprint nor its answer is kept."""
    proxy = start_proxy("--admin-token", ADMIN)
    long, longest_kept = "m" * (1 << 20), "k" * MAX_MODEL_NAME
    auth = {"Authorization": "Bearer sk-alice"}
    with httpx.Client(base_url=proxy.url, headers=auth, timeout=60) as http:
        for model in (long, longest_kept):
            body = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
            if stream:
                body["stream"] = True
            seen = [http.post("/v1/chat/completions", json=body) for _ in range(2)]
            assert [r.status_code for r in seen] == [200, 200]
            expected = ["BYPASS", "BYPASS"] if model == long else ["MISS", "HIT"]
            assert [r.headers["X-Repro-Cache"] for r in seen] == expected
    assert list(admin_get(proxy, Authorization=f"Bearer {ADMIN}").json()) == [longest_kept]
