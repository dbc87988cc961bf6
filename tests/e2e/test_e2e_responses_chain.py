"""Attacks on Responses API chains (`previous_response_id`), through the official SDK, the sim
and a real Redis: another tenant's chain in `shared` scope, a chain on a deleted response, and
the id index of a streamed response the upstream did not keep.

The upstream answers a chain only for the response's owner, and only while the response
exists: a cache that answered a chain for another tenant (who learnt or guessed the id) would
hand over a continuation of the owner's private conversation, and one that answered a chain on
a deleted response would pass a flow the real API refuses (`previous_response_not_found`)."""

from __future__ import annotations

from typing import Any

import openai
import pytest
import redis

from proxy.core import policy, responses
from tests.e2e.test_e2e_responses import INPUT, MODEL, client
from tests.e2e.test_e2e_responses_by_id import missed
from tests.fixtures_procs import Proxy, ProxyFactory, Sim

MORE = "And one more?"
SHARED = ("--cache-scope", "shared")


def chain(sdk: openai.OpenAI, previous: str, text: str = MORE) -> Any:
    return sdk.responses.with_raw_response.create(
        model=MODEL, input=text, previous_response_id=previous
    )


def posted(sim: Sim) -> int:
    return sum(r["path"] == "/v1/responses" for r in sim.llm_requests())


def refused_upstream(call: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    assert caught.value.code == "previous_response_not_found"
    assert caught.value.response.headers["X-Repro-Cache"] == "MISS"
    return caught.value


# --- 1. another tenant's chain in `shared` scope -----------------------------------------------


def test_in_shared_scope_a_chain_on_another_tenants_id_goes_to_the_upstream(
    start_proxy: ProxyFactory, sim: Sim, ns: str
) -> None:
    """The intruder learns the owner's id the way `shared` scope allows, a HIT on the same
    first question, and sends the owner's next turn on it: the owner's stored continuation
    must not be what answers."""
    proxy = start_proxy(*SHARED)
    owner, intruder = client(proxy, ns), client(proxy, ns, key="sk-intruder")
    first = owner.responses.create(model=MODEL, input=INPUT)
    made = chain(owner, first.id)
    assert chain(owner, first.id).headers["X-Repro-Cache"] == "HIT"  # cached for its owner
    learnt = intruder.responses.with_raw_response.create(model=MODEL, input=INPUT)
    assert (learnt.headers["X-Repro-Cache"], learnt.parse().id) == ("HIT", first.id)

    sent = posted(sim)
    theirs = chain(intruder, first.id)
    assert theirs.headers["X-Repro-Cache"] == "MISS" and posted(sim) == sent + 1
    assert theirs.parse().id != made.parse().id
    assert theirs.headers["X-Repro-Key"] != made.headers["X-Repro-Key"]
    # each tenant's chain is cached for that tenant alone
    assert chain(intruder, first.id).parse().id == theirs.parse().id
    assert chain(owner, first.id).parse().id == made.parse().id


def test_in_shared_scope_a_replayed_chain_and_its_id_are_only_the_owners(
    start_proxy: ProxyFactory, redis_url: str, sim: Sim, ns: str
) -> None:
    """In replay the upstream is out of reach: an intruder who knows both ids (the chain's
    from a log, say) gets a 504, never the owner's continuation, by chaining or by fetching."""
    common = (*SHARED, "--store", redis_url, "--secret", "s3cret")
    recorder, replayer = start_proxy(*common), start_proxy(*common, "--cache-mode", "replay")
    first = client(recorder, ns).responses.create(model=MODEL, input=INPUT)
    made = chain(client(recorder, ns), first.id).parse()

    owner = client(replayer, ns)
    assert chain(owner, first.id).parse().id == made.id
    assert owner.responses.retrieve(made.id).output_text == made.output_text
    for key in ("sk-intruder", "sk-other"):
        intruder = client(replayer, ns, key=key)
        assert intruder.responses.retrieve(first.id).id == first.id  # shared: anyone's to read
        shown = missed(lambda sdk=intruder: chain(sdk, first.id))
        assert made.output_text not in shown.response.text
        shown = missed(lambda sdk=intruder: sdk.responses.retrieve(made.id))
        assert made.output_text not in shown.response.text


# --- 2. a chain on a deleted response ----------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> tuple[str, ...]:
    if request.param == "memory":
        return ()
    return ("--store", request.getfixturevalue("redis_url"))


def test_a_chain_on_a_deleted_response_goes_to_the_upstream(
    start_proxy: ProxyFactory, store: tuple[str, ...], sim: Sim, ns: str
) -> None:
    proxy = start_proxy(*store)
    owner = client(proxy, ns)
    first = owner.responses.create(model=MODEL, input=INPUT)
    chain(owner, first.id)
    assert chain(owner, first.id).headers["X-Repro-Cache"] == "HIT"
    kept = owner.responses.create(model=MODEL, input="Kept.")
    chain(owner, kept.id)

    owner.responses.delete(first.id)
    sent = posted(sim)
    refused_upstream(lambda: chain(owner, first.id))
    refused_upstream(lambda: chain(owner, first.id))  # the refusal is not stored either
    assert posted(sim) == sent + 2
    assert chain(owner, kept.id).headers["X-Repro-Cache"] == "HIT"  # another id is untouched


def test_a_deletion_reaches_every_namespace_and_proxy_sharing_the_store(
    start_proxy: ProxyFactory, redis_url: str, sim: Sim, ns: str
) -> None:
    """The id is gone upstream for everyone: a chain made in another namespace, or asked
    through another proxy on the same Redis, or replayed, is no longer answered from the cache."""
    common = ("--store", redis_url, "--secret", "s3cret")
    one, two = start_proxy(*common), start_proxy(*common)
    replayer = start_proxy(*common, "--cache-mode", "replay")
    first = client(one, ns).responses.create(model=MODEL, input=INPUT)
    elsewhere = client(two, ns + "-b")
    chain(client(one, ns), first.id)
    chain(elsewhere, first.id)
    assert chain(client(replayer, ns), first.id).headers["X-Repro-Cache"] == "HIT"
    assert chain(elsewhere, first.id).headers["X-Repro-Cache"] == "HIT"

    client(one, ns).responses.delete(first.id)
    refused_upstream(lambda: chain(elsewhere, first.id))
    refused_upstream(lambda: chain(client(two, ns), first.id))
    missed(lambda: chain(client(replayer, ns), first.id))
    missed(lambda: client(replayer, ns + "-b").responses.retrieve(first.id))


def test_a_chain_on_a_deleted_response_is_not_served_stale_when_the_upstream_fails(
    start_proxy: ProxyFactory, sim: Sim, ns: str
) -> None:
    proxy = start_proxy("--stale-if-error", "3600")
    owner = client(proxy, ns)
    first = owner.responses.create(model=MODEL, input=INPUT)
    chain(owner, first.id)
    owner.responses.delete(first.id)
    sim.fault(kind="status", status=503, count=1)
    with pytest.raises(openai.InternalServerError) as caught:
        chain(owner, first.id)
    assert caught.value.status_code == 503
    assert caught.value.response.headers["X-Repro-Cache"] == "MISS"


def test_a_deletion_the_upstream_refuses_leaves_every_chain_cached(
    start_proxy: ProxyFactory, redis_url: str, sim: Sim, ns: str
) -> None:
    """An intruder's DELETE of the owner's id, or of an id of no plain form, deletes nothing
    upstream: it must not make the owner's chains miss (nor the proxy fail)."""
    proxy = start_proxy(*SHARED, "--store", redis_url)
    owner = client(proxy, ns)
    first = owner.responses.create(model=MODEL, input=INPUT)
    chain(owner, first.id)
    sim.accept_keys("sk-resp")
    intruder = client(proxy, ns, key="sk-intruder")
    with pytest.raises(openai.AuthenticationError):
        intruder.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        owner.responses.delete("resp_" + "0" * 48)
    with pytest.raises(openai.NotFoundError):
        owner.responses.delete("r" * 129)
    assert chain(owner, first.id).headers["X-Repro-Cache"] == "HIT"
    assert owner.responses.retrieve(first.id).id == first.id
    assert redis.Redis.from_url(redis_url).keys(f"*{responses.deleted_key(first.id)}*") == []


# --- 3. the id index of a streamed response made with `store: false` ---------------------------


def index_keys(redis_url: str, ns: str, response_id: str) -> list[bytes]:
    key = responses.index_key(policy.SHARED, ns, response_id)
    return list(redis.Redis.from_url(redis_url).keys(f"*{key}*"))


@pytest.mark.parametrize("stream", [False, True])
def test_a_response_the_upstream_did_not_keep_gets_no_id_index_streamed_or_not(
    start_proxy: ProxyFactory, redis_url: str, sim: Sim, ns: str, stream: bool
) -> None:
    proxy = start_proxy(*SHARED, "--store", redis_url)
    sdk = client(proxy, ns)
    made: dict[bool, str] = {}
    for store in (False, True):
        if stream:
            with sdk.responses.stream(model=MODEL, input=INPUT, store=store) as events:
                made[store] = events.get_final_response().id
        else:
            made[store] = sdk.responses.create(model=MODEL, input=INPUT, store=store).id
    assert index_keys(redis_url, ns, made[True])  # the kept one is indexed
    assert index_keys(redis_url, ns, made[False]) == []
