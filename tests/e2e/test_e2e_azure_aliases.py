"""Under an Azure resource's root (`--upstream` without /v1) the `/v1/*` pass-through sends
`/v1/X` to the root's `/X`: `/v1/openai/...` reached the upstream where the proxy's own
`/openai/...` routes do, uncached and unseeded, and a deletion through it left the cache
serving what it deleted. On per-deployment routes Azure reads the deployment, not the body's
`model`: counted by the body's, made-up names (each answered 2xx) used up the metrics' model
slots. Real proxy and sim processes, raw httpx for the paths no SDK sends."""

from __future__ import annotations

import httpx
import orjson

from tests.fixtures_procs import AZURE_VERSION, ProxyFactory, Sim

KEY = {"api-key": "az-key"}
QUERY = f"?api-version={AZURE_VERSION}"
ASK = {"messages": [{"role": "user", "content": "Name a colour."}]}


def test_a_v1_path_that_reaches_an_azure_route_is_refused_naming_it(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy(upstream=sim.url)
    aliases = [
        ("POST", "/v1/openai/deployments/dep-a/chat/completions" + QUERY, ASK),
        ("POST", "/v1/openai/v1/chat/completions", {"model": "dep-a", **ASK}),
        ("DELETE", "/v1/openai/v1/responses/resp_abc", None),
        ("GET", "/v1/openai/v1/chat/completions/chatcmpl-1", None),
    ]
    for method, path, body in aliases:
        answer = httpx.request(method, proxy.url + path, json=body, headers=KEY, timeout=10)
        assert answer.status_code == 400, (path, answer.text)
        error = answer.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_path", "path"), path
        assert "/openai/" in error["message"]
    assert sim.requests() == []  # nothing reached the upstream

    own = httpx.post(
        proxy.url + "/openai/deployments/dep-a/chat/completions" + QUERY,
        json=ASK,
        headers=KEY,
        timeout=10,
    )
    assert own.headers["X-Repro-Cache"] == "MISS"
    passed = httpx.get(proxy.url + "/openai/v1/files", headers=KEY, timeout=10)
    assert passed.headers["X-Repro-Cache"] == "BYPASS"  # a pass-through of its own still is


def test_a_per_deployment_route_is_counted_by_its_deployment(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy(upstream=sim.url)
    url = proxy.url + "/openai/deployments/dep-counted/chat/completions" + QUERY
    for n in range(3):
        body = {"model": f"made-up-{n}", **ASK}
        assert httpx.post(url, json=body, headers=KEY, timeout=10).status_code == 200
    assert (
        httpx.post(url, json={"model": "made-up-0", **ASK}, headers=KEY).headers["X-Repro-Cache"]
        == "HIT"
    )
    metrics = httpx.get(proxy.url + "/metrics", timeout=10).text
    assert 'repro_cache_misses_total{model="dep-counted"} 3.0' in metrics
    assert 'repro_cache_hits_total{model="dep-counted"} 1.0' in metrics
    assert "made-up" not in metrics
    sent = [orjson.loads(r["body"]) for r in sim.llm_requests()]
    assert [s["model"] for s in sent] == ["made-up-0", "made-up-1", "made-up-2"]  # as sent


def test_a_path_the_upstream_receives_as_a_local_route_of_the_proxy_passes_through(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """`/metrics`, `/healthz` and `/admin/...` are the proxy's own and never go upstream: a
    pass-through reaching the upstream's `/v1/metrics` is no alias of them."""
    proxy = start_proxy(upstream=sim.v1)
    for path in ("/v1/metrics", "/v1/healthz", "/v1/admin/stats"):
        answer = httpx.get(proxy.url + path, headers={"Authorization": "Bearer sk-a"}, timeout=10)
        assert answer.headers["X-Repro-Cache"] == "BYPASS", (path, answer.text)
    assert [r["path"] for r in sim.requests()] == ["/v1/metrics", "/v1/healthz", "/v1/admin/stats"]
