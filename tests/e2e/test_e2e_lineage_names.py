"""A chat model named like another model's lineage (`x@embeddings`, embeddings model `x`'s),
against a real proxy in front of the sim: each keeps its own fingerprint history.

Before: both were tracked as `x@embeddings`. Each embedding answer (no fingerprint: `none`)
was a rotation away from the chats' fingerprint, so under the default `follow` policy every
stored chat answer of `x@embeddings` became a miss whenever anyone embedded with `x`, and
/admin/fingerprints showed one history for the two."""

from __future__ import annotations

from typing import Any

import httpx

from tests.fixtures_procs import Proxy, ProxyFactory

ADMIN = "admin-token-for-tests"
CHAT_MODEL = "x@embeddings"
EMBEDDINGS_MODEL = "x"


def post(proxy: Proxy, route: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": "Bearer sk-tenant"}
    answer = httpx.post(proxy.v1 + route, json=body, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer


def chat(proxy: Proxy) -> str:
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    return post(proxy, "/chat/completions", body).headers["X-Repro-Cache"]


def embed(proxy: Proxy) -> str:
    body = {"model": EMBEDDINGS_MODEL, "input": "hi"}
    return post(proxy, "/embeddings", body).headers["X-Repro-Cache"]


def test_a_chat_model_and_an_embeddings_model_sharing_a_lineage_name_stay_apart(
    start_proxy: ProxyFactory,
) -> None:
    proxy = start_proxy("--admin-token", ADMIN)
    assert [chat(proxy), chat(proxy)] == ["MISS", "HIT"]
    assert embed(proxy) == "MISS"
    assert chat(proxy) == "HIT"  # before: MISS, the embedding taken for a rotation
    assert [embed(proxy), chat(proxy)] == ["HIT", "HIT"]
    auth = {"Authorization": f"Bearer {ADMIN}"}
    states = httpx.get(proxy.url + "/admin/fingerprints", headers=auth, timeout=5).json()
    assert sorted(states) == ["x@embeddings", "x@embeddings@"]
    assert states["x@embeddings"]["current"] == "none"  # embeddings', as before
    assert states["x@embeddings@"]["current"].startswith("fp_")  # the chat model's own
    rotations = httpx.get(proxy.url + "/admin/rotations", headers=auth, timeout=5).json()
    assert all(model["rotations"] == [] for model in rotations["models"].values())
    assert proxy.metric("repro_fingerprint_changes_total", model="x@embeddings") == 0
