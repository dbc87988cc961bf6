"""Stale-if-error, and other fault behaviour of the hardening issue, against real processes."""

from __future__ import annotations

import base64
import os

import httpx
import orjson
import redis

from tests.fixtures_procs import Proxy, ProxyFactory, Sim

AUTH = {"Authorization": "Bearer sk-alice", "Content-Type": "application/json"}
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "stale?"}]})


def post(proxy: Proxy, **headers: str) -> httpx.Response:
    return httpx.post(
        proxy.v1 + "/chat/completions", content=BODY, headers={**AUTH, **headers}, timeout=10
    )


def test_stale_if_error_serves_an_older_fingerprint_when_the_upstream_fails(
    proxy: Proxy, sim: Sim
) -> None:
    stored = post(proxy)
    assert stored.headers["X-Repro-Fingerprint"] == "fp_sim_0001"
    sim.set_fingerprint("fp_sim_0002")
    httpx.post(
        proxy.v1 + "/chat/completions",
        content=orjson.dumps({"model": "gpt-4o-mini", "messages": []}),
        headers=AUTH,
        timeout=10,
    )
    sim.fault(kind="status", status=503, count=3)
    assert post(proxy).status_code == 503
    stale = post(proxy, **{"Cache-Control": "stale-if-error=3600"})
    assert stale.status_code == 200
    assert stale.headers["X-Repro-Cache"] == "STALE"
    assert stale.headers["X-Repro-Fingerprint"] == "fp_sim_0001"
    assert stale.content == stored.content
    assert "Age" in stale.headers
    assert post(proxy, **{"Cache-Control": "stale-if-error=0"}).status_code == 503
    assert proxy.metric("repro_requests_total", route="/v1/chat/completions", cache="stale") == 1


def test_stale_if_error_setting_covers_unreachable_upstreams(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy("--stale-if-error", "3600", "--fingerprint-policy", "follow")
    stored = post(proxy)
    sim.fault(kind="drop", count=1)
    stale = post(proxy, **{"Cache-Control": "no-cache"})
    assert (stale.status_code, stale.headers["X-Repro-Cache"]) == (200, "STALE")
    assert stale.content == stored.content


def test_429_is_not_an_error_that_serves_stale(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy("--stale-if-error", "3600")
    post(proxy)
    sim.fault(kind="status", status=429, count=1, headers={"retry-after": "1"})
    limited = post(proxy, **{"Cache-Control": "no-cache"})
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1"


def chat_as(proxy: Proxy, key: str | None, **headers: str) -> httpx.Response:
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        proxy.v1 + "/chat/completions",
        content=BODY,
        headers={"Content-Type": "application/json", **auth, **headers},
        timeout=10,
    )


def test_shared_scope_serves_only_keys_the_upstream_accepts(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    sim.accept_keys("sk-alice", "sk-bob")
    proxy = start_proxy("--cache-scope", "shared")
    assert chat_as(proxy, "sk-alice").headers["X-Repro-Cache"] == "MISS"
    assert chat_as(proxy, "sk-bob").headers["X-Repro-Cache"] == "HIT"
    for intruder in ("sk-mallory", None):
        refused = chat_as(proxy, intruder)
        assert refused.status_code == 401
        assert refused.headers["X-Repro-Cache"] == "MISS"
        refused = chat_as(proxy, intruder, **{"Cache-Control": "only-if-cached"})
        assert refused.status_code == 504
    checks = [r for r in sim.requests() if r["path"] == "/v1/models"]
    # Asked before every lookup of credentials not checked yet, whether or not anything is
    # stored: alice (and once made-up credentials of her shape), bob, mallory; never anonymous.
    assert len(checks) == 4


def test_replay_mode_never_asks_about_keys(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy("--cache-mode", "replay")
    assert chat_as(proxy, "sk-alice").status_code == 504
    assert sim.requests() == []


def test_encryption_at_rest_keeps_answers_unreadable_in_redis(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str
) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    proxy = start_proxy("--store", redis_url, "--encryption-key", key)
    stored = chat_as(proxy, "sk-alice")
    assert chat_as(proxy, "sk-alice").content == stored.content
    answer = orjson.loads(stored.content)["choices"][0]["message"]["content"].encode()
    raw = redis.Redis.from_url(redis_url)
    try:
        values = [raw.dump(name) or b"" for name in raw.scan_iter()]
    finally:
        raw.close()
    assert values
    assert not any(answer in value for value in values)
    # Another key opens none of them: they read as absent (a proxy with no key refuses the
    # store: tests/e2e/test_e2e_transfer_keys.py).
    other = start_proxy(
        "--store", redis_url, "--encryption-key", base64.b64encode(os.urandom(32)).decode()
    )
    assert chat_as(other, "sk-alice").headers["X-Repro-Cache"] == "MISS"
