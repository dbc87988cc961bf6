"""A fetch by id (`GET /v1/responses/{id}`, in replay mode or asked `only-if-cached`) routed by a
keyed query parameter (a gateway's `?provider=`) reads the id index and deletion marks of its
routing, as one routed by a keyed header does. Before, any parameter but `stream` and
`api-version` made the fetch a miss: a query-routed create was never found by its id in replay,
where the same create routed by a header was."""

from __future__ import annotations

import httpx
import pytest

from tests.fixtures_procs import Proxy, ProxyFactory, Sim

WAIT = 10.0
MODEL = "gpt-4o-mini"
ROUTED = {
    "query": lambda to: (f"?provider={to}", {}),
    "header": lambda to: ("", {"X-Provider": to}),
}


@pytest.fixture
def recorded(start_proxy: ProxyFactory, redis_url: str, sim: Sim) -> tuple[Proxy, Proxy]:
    """A recording proxy and a replaying one sharing one Redis store."""
    shared = ("--store", redis_url, "--secret", "s3cret-of-16-bytes")
    return start_proxy(*shared), start_proxy(*shared, "--cache-mode", "replay")


def _sent(ns: str, headers: dict[str, str]) -> dict[str, str]:
    return {"Authorization": "Bearer sk-route", "X-Repro-Namespace": ns, **headers}


def create(proxy: Proxy, ns: str, routed: tuple[str, dict[str, str]], text: str) -> str:
    query, headers = routed
    body = {"model": MODEL, "input": text}
    got = httpx.post(
        f"{proxy.v1}/responses{query}", json=body, headers=_sent(ns, headers), timeout=WAIT
    )
    assert got.status_code == 200, got.text
    return str(got.json()["id"])


def fetch(
    proxy: Proxy, ns: str, response_id: str, routed: tuple[str, dict[str, str]], extra: str = ""
) -> httpx.Response:
    query, headers = routed
    if extra:
        query = (query + "&" if query else "?") + extra
    url = f"{proxy.v1}/responses/{response_id}{query}"
    return httpx.get(url, headers=_sent(ns, headers), timeout=WAIT)


def cache(answer: httpx.Response) -> str:
    return answer.headers.get("X-Repro-Cache", "")


@pytest.mark.parametrize("by", sorted(ROUTED))
def test_a_routed_fetch_by_id_finds_what_its_routing_created(
    recorded: tuple[Proxy, Proxy], ns: str, by: str
) -> None:
    recorder, replayer = recorded
    routed, elsewhere, unrouted = ROUTED[by]("x"), ROUTED[by]("y"), ("", {})
    made = create(recorder, ns, routed, "Routed.")
    plain = create(recorder, ns, unrouted, "Unrouted.")

    found = fetch(replayer, ns, made, routed)
    assert (found.status_code, cache(found)) == (200, "HIT"), found.text  # was a 504 by query
    assert found.json()["id"] == made
    streamed = fetch(replayer, ns, made, routed, "stream=false")
    assert (streamed.status_code, cache(streamed)) == (200, "HIT"), streamed.text
    # Another routing, or none, finds neither the routed id nor the unrouted one.
    for response_id, asked in ((made, elsewhere), (made, unrouted), (plain, routed)):
        missed = fetch(replayer, ns, response_id, asked)
        assert missed.status_code == 504, (response_id, asked, missed.text)
        assert missed.json()["error"]["code"] == "cache_miss"
    # What the proxy cannot answer from the stored object still misses.
    assert (
        fetch(replayer, ns, made, routed, "include=reasoning.encrypted_content").status_code == 504
    )


@pytest.mark.parametrize("by", sorted(ROUTED))
def test_a_routed_deletion_is_honoured_by_a_fetch_routed_alike(
    start_proxy: ProxyFactory, redis_url: str, sim: Sim, ns: str, by: str
) -> None:
    """With `only-if-cached`, outside replay: the deletion mark read is the fetch's routing's."""
    proxy = start_proxy("--store", redis_url)
    routed, elsewhere = ROUTED[by]("x"), ROUTED[by]("y")
    only = {"Cache-Control": "only-if-cached"}
    made = create(proxy, ns, routed, "Deleted later.")

    def fetched(asked: tuple[str, dict[str, str]]) -> httpx.Response:
        return fetch(proxy, ns, made, (asked[0], {**asked[1], **only}))

    assert cache(fetched(routed)) == "HIT"
    assert cache(fetched(elsewhere)) == "MISS"
    query, headers = routed
    url = f"{proxy.v1}/responses/{made}{query}"
    assert httpx.delete(url, headers=_sent(ns, headers), timeout=WAIT).status_code == 200
    after = fetched(routed)
    assert (after.status_code, cache(after)) == (504, "MISS"), after.text
