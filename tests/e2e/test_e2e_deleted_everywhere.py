"""The upstream keeps a stored chat completion or a response for its whole organization, and
any key of it may update or delete the object. Through the proxy, a change the upstream
confirms now forgets the answer carrying the id in every partition: before, only the caller's
was looked in, so in `key` scope a HIT for the key that made it went on handing out an id the
upstream no longer had (a 404 to fetch, an error to chain on), or metadata it no longer held.
A deletion the upstream refuses, or one routed to another server, forgets nothing."""

from __future__ import annotations

import httpx
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.fixtures_procs import ProxyFactory, Sim, closed_after_test
from tests.hostile import Scripted
from tests.own_server import OWN, Gateway

WAIT = 10.0
ALICE = {"Authorization": "Bearer sk-alice"}
BOB = {"Authorization": "Bearer sk-bob"}
CHAT = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Hello."}],
    "store": True,
    "metadata": {"topic": "greeting"},
}
RESPONSE = {"model": "gpt-4o-mini", "input": "Hello."}
PATHS = {"chat": ("/chat/completions", CHAT), "response": ("/responses", RESPONSE)}


def asker(proxy_v1: str, kind: str, headers: dict[str, str]) -> httpx.Response:
    path, body = PATHS[kind]
    return httpx.post(proxy_v1 + path, json=body, headers=headers, timeout=WAIT)


@pytest.mark.parametrize("store", ["memory", "redis"])
@pytest.mark.parametrize("kind", sorted(PATHS))
def test_another_keys_deletion_forgets_the_makers_answer(
    start_proxy: ProxyFactory, sim: Sim, request: pytest.FixtureRequest, kind: str, store: str
) -> None:
    extra = ("--store", request.getfixturevalue("redis_url")) if store == "redis" else ()
    proxy = start_proxy(*extra)  # `key` scope: alice and bob have partitions of their own
    first = asker(proxy.v1, kind, ALICE)
    assert first.headers["X-Repro-Cache"] == "MISS"
    made = first.json()["id"]
    assert asker(proxy.v1, kind, ALICE).json()["id"] == made  # a HIT

    path = PATHS[kind][0]
    deleted = httpx.delete(f"{proxy.v1}{path}/{made}", headers=BOB, timeout=WAIT)
    assert deleted.status_code == 200  # the sim, as OpenAI for one organization, lets bob

    after = asker(proxy.v1, kind, ALICE)
    assert after.headers["X-Repro-Cache"] == "MISS"  # was a HIT carrying the deleted id
    assert after.json()["id"] != made
    assert httpx.get(f"{proxy.v1}{path}/{after.json()['id']}", headers=ALICE).is_success


def test_another_keys_update_forgets_the_metadata_it_replaced(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy()
    made = asker(proxy.v1, "chat", ALICE).json()["id"]
    url = f"{proxy.v1}/chat/completions/{made}"
    changed = httpx.post(url, json={"metadata": {"topic": "x"}}, headers=BOB, timeout=WAIT)
    assert changed.status_code == 200
    after = asker(proxy.v1, "chat", ALICE)
    assert after.headers["X-Repro-Cache"] == "MISS"  # was a HIT with `{"topic": "greeting"}`


@pytest.mark.parametrize("kind", sorted(PATHS))
def test_a_refused_deletion_forgets_nothing_anywhere(
    start_proxy: ProxyFactory, sim: Sim, kind: str
) -> None:
    """An attacker who learned the id but may not delete it (the upstream says 404) evicts
    nothing: the maker's answer stays a HIT."""
    proxy = start_proxy()
    made = asker(proxy.v1, kind, ALICE).json()["id"]
    path = PATHS[kind][0]
    httpx.delete(f"{proxy.v1}{path}/{made}", headers=ALICE, timeout=WAIT)  # now gone upstream
    remade = asker(proxy.v1, kind, ALICE)
    assert remade.headers["X-Repro-Cache"] == "MISS"
    again = remade.json()["id"]
    assert httpx.delete(f"{proxy.v1}{path}/{made}", headers=BOB, timeout=WAIT).status_code == 404
    assert httpx.delete(f"{proxy.v1}{path}/resp_unknown", headers=BOB).status_code == 404
    hit = asker(proxy.v1, kind, ALICE)
    assert hit.headers["X-Repro-Cache"] == "HIT"
    assert hit.json()["id"] == again


@pytest.mark.parametrize("routed_by", sorted(OWN))
def test_a_deletion_routed_to_another_server_forgets_nothing(
    start_proxy: ProxyFactory, sim: Sim, routed_by: str
) -> None:
    """A tenant routing its deletion to a server of its own (a keyed header or query parameter
    a gateway reads), which confirms the deletion of any id, evicts no other partition's
    answer made unrouted: the pointer it would follow is its routing's."""
    gateway = Gateway(sim)
    query, headers = OWN[routed_by]
    with Scripted(gateway) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        made = asker(proxy.v1, "response", ALICE).json()["id"]
        url = f"{proxy.v1}/responses/{made}{query}"
        assert httpx.delete(url, headers={**BOB, **headers}, timeout=WAIT).status_code == 200
        assert gateway.own_deletes == 1
        hit = asker(proxy.v1, "response", ALICE)
        assert hit.headers["X-Repro-Cache"] == "HIT"
        assert hit.json()["id"] == made


def test_the_sdks_delete_by_another_key_reaches_every_partition(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """The official SDK's `responses.delete` and `chat.completions.delete`, from another key."""
    proxy = start_proxy()
    alice, bob = (
        closed_after_test(OpenAI(base_url=proxy.v1, api_key=key, max_retries=0, timeout=WAIT))
        for key in ("sk-alice", "sk-bob")
    )
    response = alice.responses.create(model="gpt-4o-mini", input="Hi.")
    assert alice.responses.create(model="gpt-4o-mini", input="Hi.").id == response.id
    bob.responses.delete(response.id)
    assert alice.responses.create(model="gpt-4o-mini", input="Hi.").id != response.id

    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi."}]
    chat = alice.chat.completions.create(model="gpt-4o-mini", messages=messages, store=True)
    assert bob.chat.completions.delete(chat.id).deleted
    again = alice.chat.completions.create(model="gpt-4o-mini", messages=messages, store=True)
    assert again.id != chat.id


@pytest.mark.parametrize("kind", sorted(PATHS))
def test_an_imported_answers_id_is_followed_as_a_recorded_ones(
    start_proxy: ProxyFactory, sim: Sim, kind: str
) -> None:
    """A cassette imported into a live proxy (`/admin/import`) brings the ids of what the
    upstream keeps: before, a loaded chat completion's id was not indexed at all, and a loaded
    response's only for fetches by its own tenant, so a deletion through this proxy left the
    imported answer handing out the deleted id."""
    admin = {"Authorization": "Bearer admin-token-for-imports"}
    flags = ("--admin-token", "admin-token-for-imports", "--cache-scope", "shared")
    source, target = start_proxy(*flags), start_proxy(*flags)
    made = asker(source.v1, kind, ALICE).json()["id"]
    exported = httpx.get(f"{source.url}/admin/export", headers=admin, timeout=WAIT)
    imported = httpx.post(
        f"{target.url}/admin/import", content=exported.content, headers=admin, timeout=WAIT
    )
    assert imported.json() == {"imported": 1}
    assert asker(target.v1, kind, ALICE).headers["X-Repro-Cache"] == "HIT"

    url = f"{target.v1}{PATHS[kind][0]}/{made}"
    assert httpx.delete(url, headers=BOB, timeout=WAIT).status_code == 200
    after = asker(target.v1, kind, ALICE)
    assert after.headers["X-Repro-Cache"] == "MISS"  # was a HIT carrying the deleted id
    assert after.json()["id"] != made
