"""A `DELETE /v1/responses/{id}` routed by keyed headers or a keyed query (a gateway sending it
to the tenant's own server, which accepts any id) marks the id deleted only for requests routed
the same way: before, its mark was everyone's, and any tenant could turn every owner's chain
HITs on a known id into misses. An unrouted deletion still marks it for unrouted requests."""

from __future__ import annotations

import httpx
import pytest

from tests.fixtures_procs import ProxyFactory, Sim
from tests.hostile import Scripted
from tests.own_server import OWN, Gateway

WAIT = 10.0


@pytest.mark.parametrize("routed_by", sorted(OWN))
def test_a_routed_delete_leaves_the_owners_unrouted_chains_cached(
    start_proxy: ProxyFactory, sim: Sim, routed_by: str
) -> None:
    gateway = Gateway(sim)
    query, headers = OWN[routed_by]
    with Scripted(gateway) as upstream:
        proxy = start_proxy("--cache-scope", "shared", upstream=upstream.v1)

        def ask(body: dict[str, object]) -> httpx.Response:
            auth = {"Authorization": "Bearer sk-alice"}
            return httpx.post(proxy.v1 + "/responses", json=body, headers=auth, timeout=WAIT)

        def delete(response_id: str, key: str, query: str, headers: dict[str, str]) -> int:
            url = f"{proxy.v1}/responses/{response_id}{query}"
            sent = {"Authorization": f"Bearer {key}", **headers}
            return httpx.delete(url, headers=sent, timeout=WAIT).status_code

        first = ask({"model": "gpt-4o-mini", "input": "Hello."}).json()["id"]
        chained = {"model": "gpt-4o-mini", "input": "And then?", "previous_response_id": first}
        assert ask(chained).headers["X-Repro-Cache"] == "MISS"
        assert ask(chained).headers["X-Repro-Cache"] == "HIT"

        assert delete(first, "sk-mallory", query, headers) == 200
        assert gateway.own_deletes == 1
        assert ask(chained).headers["X-Repro-Cache"] == "HIT"  # was a MISS: the cache denied

        assert delete(first, "sk-alice", "", {}) == 200  # the owner's, through its upstream
        after = ask(chained)
        assert after.headers["X-Repro-Cache"] != "HIT"
        assert after.status_code == 400  # the sim no longer continues it
