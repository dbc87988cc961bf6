"""Attacks on Responses API chains (`previous_response_id`), through the official SDK, the sim
and a real Redis: a chain on an id learnt elsewhere in `shared` scope, a chain on a deleted
response, and the id index of a streamed response the upstream did not keep.

The upstream answers a chain only for the response's owner, and only while the response
exists: a cache that answered a chain for a tenant who merely learnt the id (a log, a guess)
would hand over a continuation of the owner's private conversation, and one that answered a
chain on a deleted response would pass a flow the real API refuses
(`previous_response_not_found`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from proxy.core import policy, responses
from tests.e2e.test_e2e_responses import INPUT, MODEL, client
from tests.e2e.test_e2e_responses_by_id import missed
from tests.fixtures_procs import ProxyFactory, Sim, free_port, stop

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


def test_in_shared_scope_a_chain_on_an_id_learnt_elsewhere_goes_to_the_upstream(
    start_proxy: ProxyFactory, sim: Sim, ns: str
) -> None:
    """An intruder who learnt the owner's id from a log, and sends the owner's next turn on it,
    never gets the owner's stored continuation. A colleague who asked the same first question
    was answered with that very response (`shared` scope shares answers) and knows the whole
    conversation: the cache continues it for them."""
    proxy = start_proxy(*SHARED)
    owner = client(proxy, ns)
    first = owner.responses.create(model=MODEL, input=INPUT)
    made = chain(owner, first.id)
    assert made.headers["X-Repro-Cache"] == "MISS"
    assert chain(owner, first.id).headers["X-Repro-Cache"] == "HIT"

    intruder = client(proxy, ns, key="sk-intruder")
    for _ in range(2):
        sent = posted(sim)
        theirs = chain(intruder, first.id)
        assert theirs.headers["X-Repro-Cache"] == "MISS" and posted(sim) == sent + 1
        assert theirs.parse().id != made.parse().id
    with pytest.raises(openai.BadRequestError):  # the sim's answer: no previous response
        chain(intruder, "resp_" + "0" * 48)

    colleague = client(proxy, ns, key="sk-colleague")
    asked = colleague.responses.with_raw_response.create(model=MODEL, input=INPUT)
    assert (asked.headers["X-Repro-Cache"], asked.parse().id) == ("HIT", first.id)
    assert chain(colleague, first.id).headers["X-Repro-Cache"] == "HIT"


def test_in_shared_scope_a_replayed_chain_and_its_id_are_only_for_who_asked_them(
    start_proxy: ProxyFactory, redis_url: str, sim: Sim, ns: str
) -> None:
    """In replay the upstream is out of reach: an intruder who knows both ids gets a 504,
    never the owner's responses, by chaining or by fetching, through any proxy on the store."""
    common = (*SHARED, "--store", redis_url, "--secret", "a-shared-secret-of-32-characters")
    recorder, replayer = start_proxy(*common), start_proxy(*common, "--cache-mode", "replay")
    first = client(recorder, ns).responses.create(model=MODEL, input=INPUT)
    made = chain(client(recorder, ns), first.id).parse()

    owner = client(replayer, ns)
    assert chain(owner, first.id).parse().id == made.id
    assert owner.responses.retrieve(made.id).output_text == made.output_text
    assert owner.responses.retrieve(first.id).id == first.id
    intruder = client(replayer, ns, key="sk-intruder")
    for response_id in (first.id, made.id):
        shown = missed(lambda i=response_id: intruder.responses.retrieve(i))
        assert made.output_text not in shown.response.text
    shown = missed(lambda: chain(intruder, first.id))
    assert made.output_text not in shown.response.text

    colleague = client(replayer, ns, key="sk-colleague")
    assert colleague.responses.create(model=MODEL, input=INPUT).id == first.id
    assert colleague.responses.retrieve(first.id).id == first.id
    assert chain(colleague, first.id).parse().id == made.id
    assert colleague.responses.retrieve(made.id).id == made.id


def test_a_cassette_replays_a_chain_for_another_key_that_asks_it_from_the_start(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """What the pytest plugin does: record a conversation with one key, replay it in CI with
    another; the chain replays for the key that asked its first turn, and for no other."""
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy(*SHARED, "--cassette", str(tape))
    recording = client(recorder, "", key="sk-recording-key")
    first = recording.responses.create(model=MODEL, input=INPUT)
    made = chain(recording, first.id).parse()
    stop(recorder.proc)
    offline = f"http://127.0.0.1:{free_port()}/v1"
    flags = (*SHARED, "--cassette", str(tape), "--cache-mode", "replay")
    replayer = start_proxy(*flags, upstream=offline)
    ci = client(replayer, "", key="sk-ci-key")
    assert ci.responses.create(model=MODEL, input=INPUT).id == first.id
    assert chain(ci, first.id).parse().output_text == made.output_text
    assert ci.responses.retrieve(made.id).id == made.id
    missed(lambda: chain(client(replayer, "", key="sk-intruder"), first.id))


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
    common = ("--store", redis_url, "--secret", "a-shared-secret-of-32-characters")
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


def test_a_streamed_chain_follows_the_same_rules(
    start_proxy: ProxyFactory, redis_url: str, sim: Sim, ns: str
) -> None:
    proxy = start_proxy(*SHARED, "--store", redis_url)
    owner, intruder = client(proxy, ns), client(proxy, ns, key="sk-intruder")
    with owner.responses.stream(model=MODEL, input=INPUT) as events:
        first = events.get_final_response().id

    def streamed(sdk: openai.OpenAI) -> tuple[str, str]:
        raw = sdk.responses.with_raw_response.create(
            model=MODEL, input=MORE, previous_response_id=first, stream=True
        )
        completed = [e for e in raw.parse() if e.type == "response.completed"]
        return raw.headers["X-Repro-Cache"], completed[0].response.id

    made = streamed(owner)
    assert made[0] == "MISS" and streamed(owner) == ("HIT", made[1])
    assert streamed(intruder)[0] == "MISS"
    owner.responses.delete(first)
    with pytest.raises(openai.BadRequestError) as caught:
        streamed(owner)
    assert caught.value.code == "previous_response_not_found"


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
