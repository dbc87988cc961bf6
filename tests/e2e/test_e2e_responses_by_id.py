"""Attacks on the Responses API's ids, non-streamed, through the official SDK: fetching by id
in replay, deleting, chaining with `previous_response_id`, background jobs, Azure's
`/openai/responses/{id}`, and hostile ids and outputs.

A fetch by id is answered from the cache only with what the upstream would answer: a response
it kept (never one made with `store: false`), fetched as it was stored (a query asking for
more, `include` or `starting_after`, is a miss), to the tenant, namespace and api-version that
created it. A response the upstream deleted no longer answers the request that made it. A
chain on another tenant's id is never answered from the cache."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.e2e.test_e2e_responses import INPUT, MODEL, client, post, stored
from tests.fixtures_procs import Proxy, ProxyFactory, Sim, azure_client, raw_answer
from tests.hostile import Scripted, fixed, http_answer


@pytest.fixture
def recorded(start_proxy: ProxyFactory, redis_url: str, sim: Sim) -> tuple[Proxy, Proxy]:
    """A recording proxy and a replaying one sharing one Redis store."""
    shared = ("--store", redis_url, "--secret", "s3cret-of-16-bytes")
    return start_proxy(*shared), start_proxy(*shared, "--cache-mode", "replay")


def missed(call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    assert caught.value.status_code == 504, caught.value.response.text
    assert caught.value.response.json()["error"]["code"] == "cache_miss"
    return caught.value


def test_a_response_the_upstream_did_not_keep_is_not_found_by_its_id(
    recorded: tuple[Proxy, Proxy], sim: Sim, ns: str
) -> None:
    """The upstream answers 404 for the id of a `store: false` response: a replay that served
    it would pass a flow the real API fails."""
    recorder, replayer = recorded
    unkept = client(recorder, ns).responses.create(model=MODEL, input=INPUT, store=False)
    kept = client(recorder, ns).responses.create(model=MODEL, input="Kept.")
    sdk = client(replayer, ns)
    assert sdk.responses.retrieve(kept.id).id == kept.id
    assert (
        sdk.responses.with_raw_response.create(model=MODEL, input=INPUT, store=False).headers[
            "X-Repro-Cache"
        ]
        == "HIT"
    )
    shown = missed(lambda: sdk.responses.retrieve(unkept.id))
    assert unkept.output_text not in shown.response.text


@pytest.mark.parametrize(
    "asked",
    [
        {"include": ["message.output_text.logprobs"]},
        {"include_obfuscation": False},
        {"starting_after": 3},
        {"extra_query": {"strem": "true"}},
    ],
)
def test_a_fetch_asking_for_what_the_stored_response_lacks_is_a_miss(
    recorded: tuple[Proxy, Proxy], sim: Sim, ns: str, asked: dict[str, Any]
) -> None:
    """`include` asks the upstream to add fields the stored object does not hold, and
    `starting_after` to skip events: answered with the stored object as is, the client would
    read a response that is not what it asked for."""
    recorder, replayer = recorded
    created = client(recorder, ns).responses.create(model=MODEL, input=INPUT)
    sdk = client(replayer, ns)
    assert sdk.responses.retrieve(created.id).id == created.id
    missed(lambda: sdk.responses.retrieve(created.id, **asked))
    assert [r["method"] for r in sim.requests()] == ["POST"]


def test_a_chain_on_another_tenants_id_is_never_answered_from_the_cache(
    recorded: tuple[Proxy, Proxy], sim: Sim, ns: str
) -> None:
    recorder, replayer = recorded
    owner = client(recorder, ns)
    first = owner.responses.create(model=MODEL, input=INPUT)
    chained = owner.responses.create(
        model=MODEL, input="And one more?", previous_response_id=first.id
    )
    assert (
        client(replayer, ns)
        .responses.create(model=MODEL, input="And one more?", previous_response_id=first.id)
        .id
        == chained.id
    )
    intruder = client(replayer, ns, key="sk-intruder")
    shown = missed(
        lambda: intruder.responses.create(
            model=MODEL, input="And one more?", previous_response_id=first.id
        )
    )
    assert chained.output_text not in shown.response.text
    missed(lambda: intruder.responses.retrieve(chained.id))


def test_a_response_deleted_upstream_no_longer_answers_the_request_that_made_it(
    start_proxy: ProxyFactory, sim: Sim, ns: str
) -> None:
    """Without the proxy, the same request after a deletion makes a new response, which a
    client can fetch and chain on; a HIT would hand back the deleted id instead."""
    proxy = start_proxy()
    owner, other = client(proxy, ns), client(proxy, ns, key="sk-other")
    first = owner.responses.create(model=MODEL, input=INPUT)
    theirs = other.responses.create(model=MODEL, input=INPUT)
    hit = owner.responses.with_raw_response.create(model=MODEL, input=INPUT)
    assert (hit.headers["X-Repro-Cache"], hit.parse().id) == ("HIT", first.id)

    # Another key the upstream lets delete it (of the same organization): gone for everyone,
    # so the owner's stored answer goes too (test_e2e_deleted_everywhere.py).
    other.responses.delete(first.id)
    remade = owner.responses.with_raw_response.create(model=MODEL, input=INPUT)
    assert remade.headers["X-Repro-Cache"] == "MISS" and remade.parse().id != first.id
    with pytest.raises(openai.NotFoundError):
        owner.responses.delete(first.id)  # already gone upstream: the cache keeps its answer
    assert stored(proxy, ns, {"model": MODEL, "input": INPUT})
    hit = owner.responses.with_raw_response.create(model=MODEL, input=INPUT)
    assert (hit.headers["X-Repro-Cache"], hit.parse().id) == ("HIT", remade.parse().id)

    second = owner.responses.create(model=MODEL, input="Another.")
    owner.responses.delete(second.id)
    again = owner.responses.with_raw_response.create(model=MODEL, input="Another.")
    assert again.headers["X-Repro-Cache"] == "MISS" and again.parse().id != second.id
    assert owner.responses.retrieve(again.parse().id).id == again.parse().id
    kept = other.responses.with_raw_response.create(model=MODEL, input=INPUT)
    assert (kept.headers["X-Repro-Cache"], kept.parse().id) == ("HIT", theirs.id)

    third = owner.responses.create(model=MODEL, input="A third.")
    refused = httpx.delete(
        proxy.v1 + f"/responses/{third.id}",
        headers={"Authorization": "Bearer sk-resp", "X-Repro-Namespace": "n" * 300},
    )
    assert refused.status_code == 400  # before the upstream deletes anything
    assert owner.responses.retrieve(third.id).id == third.id


def test_a_background_response_polled_to_completion_is_never_stored_nor_found_by_id(
    recorded: tuple[Proxy, Proxy], sim: Sim, ns: str
) -> None:
    """Its creation is a queued job and each poll a pass-through: none of it is an answer the
    proxy may store, even once the poll says `completed`."""
    recorder, replayer = recorded
    sdk = client(recorder, ns)
    queued = sdk.responses.with_raw_response.create(model=MODEL, input=INPUT, background=True)
    job = queued.parse()
    assert (queued.headers["X-Repro-Cache"], job.status) == ("BYPASS", "queued")
    polled = sdk.responses.with_raw_response.retrieve(job.id)
    assert (polled.headers["X-Repro-Cache"], polled.parse().status) == ("BYPASS", "completed")
    sent = len(sim.requests())
    # only-if-cached: a stored answer or a 504, never a second job queued upstream
    assert not stored(recorder, ns, {"model": MODEL, "input": INPUT, "background": True})
    assert not stored(recorder, ns, {"model": MODEL, "input": INPUT})
    assert len(sim.requests()) == sent
    missed(lambda: client(replayer, ns).responses.retrieve(job.id))


def test_only_if_cached_never_reaches_the_upstream_on_a_by_id_or_pass_through_route(
    start_proxy: ProxyFactory, sim: Sim, ns: str
) -> None:
    """`Cache-Control: only-if-cached` promises a stored answer or a 504: a fetch by id is
    answered from the proxy's index, as in replay, and a deletion, or any pass-through route,
    never leaves the proxy."""
    proxy = start_proxy()
    created = client(proxy, ns).responses.create(model=MODEL, input=INPUT)
    sent = len(sim.requests())
    cached_only = client(proxy, ns).with_options(
        default_headers={"X-Repro-Namespace": ns, "Cache-Control": "only-if-cached"}
    )
    fetched = cached_only.responses.with_raw_response.retrieve(created.id)
    assert (fetched.headers["X-Repro-Cache"], fetched.parse().id) == ("HIT", created.id)
    missed(lambda: cached_only.responses.retrieve("resp_unknown"))
    missed(lambda: cached_only.responses.delete(created.id))
    missed(lambda: cached_only.models.list())
    assert len(sim.requests()) == sent
    assert client(proxy, ns).responses.retrieve(created.id).id == created.id  # still upstream


def test_a_completed_response_carrying_an_error_is_not_stored(
    start_proxy: ProxyFactory, sim: Sim, ns: str
) -> None:
    """An upstream that says `completed` and `error` at once has not said which: a retry may
    get either, so the answer is relayed but never stored."""
    proxy = start_proxy()
    answer = {
        "object": "response",
        "id": "resp_odd",
        "status": "completed",
        "output": [],
        "error": {"code": "server_error", "message": "boom"},
    }
    sim.fault(kind="status", status=200, body=answer)
    body = {"model": MODEL, "input": INPUT}
    relayed = post(proxy, ns, body)
    assert relayed.status_code == 200 and relayed.json() == answer
    assert not stored(proxy, ns, body)


# --- Azure: /openai/responses/{id} ------------------------------------------------------------


@pytest.fixture
def azure_recorded(start_proxy: ProxyFactory, redis_url: str, sim: Sim) -> tuple[Proxy, Proxy]:
    shared = ("--store", redis_url, "--secret", "s3cret-of-16-bytes")
    return (
        start_proxy(*shared, upstream=sim.url),
        start_proxy(*shared, "--cache-mode", "replay", upstream=sim.url),
    )


def test_azure_fetch_by_id_is_scoped_by_api_key_and_api_version(
    azure_recorded: tuple[Proxy, Proxy], sim: Sim, ns: str
) -> None:
    """The `api-key` header is the tenant's credential, and an api-version names the shape the
    object is served in: a fetch under another of either finds nothing."""
    recorder, replayer = azure_recorded
    created = azure_client(recorder, ns, version="2025-03-01-preview").responses.create(
        model="dep", input=INPUT
    )
    own = azure_client(replayer, ns, version="2025-03-01-preview")
    raw = own.responses.with_raw_response.retrieve(created.id)
    assert raw.headers["X-Repro-Cache"] == "HIT" and raw.parse().id == created.id
    other_key = azure_client(replayer, ns, key="az-other", version="2025-03-01-preview")
    other_version = azure_client(replayer, ns, version="2025-04-01-preview")
    for other in (other_key, other_version):
        shown = missed(lambda other=other: other.responses.retrieve(created.id))  # type: ignore[misc]
        assert created.output_text not in shown.response.text
    bearer = httpx.get(
        replayer.url + f"/openai/responses/{created.id}?api-version=2025-03-01-preview",
        headers={"Authorization": "Bearer az-other", "X-Repro-Namespace": ns},
    )
    assert bearer.status_code == 504
    assert [r["method"] for r in sim.requests()] == ["POST"]


# --- hostile output ---------------------------------------------------------------------------


def completed(output: bytes) -> bytes:
    return b'{"object":"response","id":"resp_deep","status":"completed","output":' + output + b"}"


def test_an_output_too_deep_to_read_is_relayed_but_never_stored(
    start_proxy: ProxyFactory, ns: str
) -> None:
    """Deeper than any JSON reader follows: the proxy cannot tell it is an answer."""
    answer = completed(b"[" * 5000 + b"]" * 5000)
    with Scripted(fixed(http_answer(answer, "Content-Type: application/json"))) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        body = {"model": MODEL, "input": INPUT}
        relayed = post(proxy, ns, body)
        assert relayed.status_code == 200 and relayed.content == answer
        assert not stored(proxy, ns, body)
        assert post(proxy, ns, body).headers["X-Repro-Cache"] == "MISS"


def test_an_output_larger_than_max_entry_is_refused_and_never_stored(
    start_proxy: ProxyFactory, ns: str
) -> None:
    answer = completed(b'[{"type":"message","content":"' + b"x" * 2_000_000 + b'"}]')
    with Scripted(fixed(http_answer(answer, "Content-Type: application/json"))) as upstream:
        proxy = start_proxy("--max-entry", "1000000", upstream=upstream.v1)
        body = {"model": MODEL, "input": INPUT}
        refused = post(proxy, ns, body)
        assert refused.status_code == 502
        assert refused.json()["error"]["code"] == "upstream_answer_too_large"
        assert not stored(proxy, ns, body)
        assert httpx.get(proxy.url + "/healthz").status_code == 200


# --- ids with path tricks, outside replay -----------------------------------------------------

HOSTILE_IDS = [
    "..%2F..%2Fadmin",
    "r%2F..%2F..%2Ffiles",
    "%2e%2e/%2e%2e/%2e%2e/admin",
    "r/../../../admin",
    "%252e%252e%252fadmin",
    "r%5C..%5C..%5Cadmin",
    "resp_" + "x" * 4000,
    "%C3%A9t%C3%A9",
]


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("DELETE", ""), ("POST", "/cancel"), ("GET", "/input_items")],
)
def test_a_hostile_id_never_reaches_the_upstream_outside_v1_responses(
    start_proxy: ProxyFactory, method: str, suffix: str
) -> None:
    """Every fetch, deletion, cancellation and item listing passes through outside replay: an
    id that climbs out of its route is refused, and any other arrives upstream as one segment
    under /v1/responses/, with no dot segment or encoded slash for the upstream to resolve."""
    with Scripted(fixed(http_answer(b"{}", "Content-Type: application/json"))) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        for hostile in HOSTILE_IDS:
            sent = len(upstream.received)
            head = (
                f"{method} /v1/responses/{hostile}{suffix} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Authorization: Bearer sk-a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            status, answer_head, answer = raw_answer(proxy.port, head.encode())
            if status == 400:
                assert len(upstream.received) == sent, hostile
                continue
            assert status == 200, (hostile, answer_head, answer[:200])
            (seen,) = upstream.received[sent:]
            target = seen.request_line.split(" ")[1]
            assert target.startswith("/v1/responses/"), target
            tail = target[len("/v1/responses/") :].lower()
            assert ".." not in tail and "%2f" not in tail and "%5c" not in tail, target
            assert tail.count("/") == suffix.count("/"), target
