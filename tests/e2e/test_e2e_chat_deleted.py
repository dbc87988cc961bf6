"""A chat completion made with `store: true` is kept by the upstream, which can update its
`metadata` (`POST /v1/chat/completions/{id}`) or delete it (`DELETE`). Through the proxy, either
forgets the stored answer that carries the id: before, a HIT of the request that made it still
handed out an id the upstream no longer had (a 404 to fetch), or the metadata it no longer
holds; now that request reaches the upstream again, as it would without the proxy."""

from __future__ import annotations

import httpx
import pytest

from tests.fixtures_procs import ProxyFactory, Sim

WAIT = 10.0
AUTH = {"Authorization": "Bearer sk-alice"}
ASKED = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Hello."}],
    "store": True,
    "metadata": {"topic": "greeting"},
}


@pytest.mark.parametrize("scope", ["key", "shared"])
@pytest.mark.parametrize("change", ["delete", "update"])
def test_a_changed_stored_chat_completion_is_not_served_again(
    start_proxy: ProxyFactory, sim: Sim, scope: str, change: str
) -> None:
    proxy = start_proxy("--cache-scope", scope)

    def ask() -> httpx.Response:
        return httpx.post(proxy.v1 + "/chat/completions", json=ASKED, headers=AUTH, timeout=WAIT)

    first = ask()
    assert first.headers["X-Repro-Cache"] == "MISS"
    made = first.json()["id"]
    assert ask().headers["X-Repro-Cache"] == "HIT"

    url = f"{proxy.v1}/chat/completions/{made}"
    if change == "delete":
        assert httpx.delete(url, headers=AUTH, timeout=WAIT).status_code == 200
    else:
        renamed = {"metadata": {"topic": "renamed"}}
        assert httpx.post(url, json=renamed, headers=AUTH, timeout=WAIT).status_code == 200

    after = ask()
    assert after.headers["X-Repro-Cache"] == "MISS"  # was a HIT carrying the changed id
    assert after.json()["id"] != made
    assert httpx.get(f"{proxy.v1}/chat/completions/{after.json()['id']}", headers=AUTH).is_success
    assert ask().headers["X-Repro-Cache"] == "HIT"  # the new one is cached as any answer


def test_a_failed_change_forgets_nothing(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy()

    def ask() -> httpx.Response:
        return httpx.post(proxy.v1 + "/chat/completions", json=ASKED, headers=AUTH, timeout=WAIT)

    ask()
    url = f"{proxy.v1}/chat/completions/chatcmpl-unknown"
    assert httpx.delete(url, headers=AUTH, timeout=WAIT).status_code == 404
    assert ask().headers["X-Repro-Cache"] == "HIT"
