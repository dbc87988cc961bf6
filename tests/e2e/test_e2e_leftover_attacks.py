"""Leftover attacks of a hostile client or upstream, each against real processes: the sim or a
scripted hostile upstream, real Redis where proxies share a store.

- A stored answer served another way than a HIT (a Responses fetch by id, `only-if-cached`)
  passes the same key check as a HIT: a revoked key reads nothing.
- A key check reads a bounded part of the upstream's answer, and only so many distinct checks
  are in flight: made-up keys cannot make the proxy buffer 32 MiB each, or open upstream calls
  without bound.
- An upstream's `Set-Cookie` reaches only the client it answered, and never one for the
  operators' session cookie.
- An embeddings answer without vectors is relayed but never stored.
"""

from __future__ import annotations

import httpx
import pytest

from tests.fixtures_procs import Proxy, ProxyFactory, Sim

RESPONSE = {"model": "gpt-4o-mini", "input": "Name three rivers."}


def fetch_by_id(proxy: Proxy, response_id: str, key: str, ns: str) -> httpx.Response:
    headers = {
        "Authorization": f"Bearer {key}",
        "X-Repro-Namespace": ns,
        "Cache-Control": "only-if-cached",
    }
    return httpx.get(f"{proxy.v1}/responses/{response_id}", headers=headers, timeout=10)


def create(proxy: Proxy, key: str, ns: str) -> str:
    headers = {"Authorization": f"Bearer {key}", "X-Repro-Namespace": ns}
    made = httpx.post(proxy.v1 + "/responses", json=RESPONSE, headers=headers, timeout=10)
    assert made.status_code == 200, made.text
    return str(made.json()["id"])


@pytest.mark.parametrize("scope", ["key", "shared"])
def test_a_revoked_key_fetches_no_stored_response_by_id(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, ns: str, scope: str
) -> None:
    """`GET /v1/responses/{id}` with `only-if-cached` outside replay mode serves the stored
    response: it must pass the key check a HIT of the request that made it passes. A second
    proxy on the same store has no verdict on the key yet, as any proxy once the key-check
    interval has passed: it asks the upstream, which refuses the revoked key."""
    store = ("--store", redis_url, "--secret", "s3cret-of-16-bytes", "--cache-scope", scope)
    recorder, reader = start_proxy(*store), start_proxy(*store)
    sim.accept_keys("sk-alice", "sk-carol")
    revoked = create(recorder, "sk-alice", ns)
    kept = create(recorder, "sk-carol", ns + "-carol")
    sim.accept_keys("sk-carol")  # alice's key is revoked
    served = fetch_by_id(reader, kept, "sk-carol", ns + "-carol")
    assert served.status_code == 200, served.text  # a key still accepted reads by id
    assert served.headers["X-Repro-Cache"] == "HIT"
    refused = fetch_by_id(reader, revoked, "sk-alice", ns)
    assert refused.status_code == 504, refused.text
    assert refused.json()["error"]["code"] == "cache_miss"
    assert "output" not in refused.json()
    asked = [r["path"] for r in sim.requests() if r["method"] == "GET"]
    assert "/v1/models" in asked  # the reader asked about alice's key
    assert f"/v1/responses/{revoked}" not in asked  # and never sent the fetch itself upstream
