"""Stale-if-error, and other fault behaviour of the hardening issue, against real processes."""

from __future__ import annotations

import httpx
import orjson

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
