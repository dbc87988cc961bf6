"""Attack pass 3, pure: values a hostile upstream or cassette nests deeper than orjson writes."""

from __future__ import annotations

import orjson
import pytest

from proxy.core import responses, routes
from proxy.core.entry import Entry
from proxy.core.policy import CacheMode, CacheScope, Outcome
from proxy.store import cassette
from tests.unit.test_responses_azure import BODY, Rules, decide

DEPTH = 300  # orjson reads up to 1024 levels, and writes at most 254
DEEP = b"[" * DEPTH + b"]" * DEPTH


def typed(payload: dict[str, object]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (str(payload["type"]).encode(), orjson.dumps(payload))


def deep_response_stream() -> bytes:
    """A streamed response whose completed object holds a value nested DEPTH levels deep."""
    response = {
        "object": "response",
        "id": "resp_deep",
        "status": "completed",
        "model": "m",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}],
        "metadata": {"x": "D"},
    }
    created = {"type": "response.created", "response": {**response, "status": "in_progress"}}
    completed = {"type": "response.completed", "response": response}
    return (typed(created) + typed(completed)).replace(b'"D"', DEEP)


def test_a_cassette_holding_a_streamed_response_too_deep_to_write_loads_without_its_index() -> None:
    """The proxy records such a stream (tests/e2e/test_e2e_attack_pass3.py) and exports it:
    loading that cassette failed whole, naming the line with orjson's 'Recursion limit'."""
    request = {"model": "m", "input": "x", "stream": True}
    entry = Entry(
        body=deep_response_stream(),
        content_type="text/event-stream",
        fingerprint="none",
        stored_at=1.0,
        model="m",
        stream=True,
        route="/v1/responses",
        request=orjson.dumps(request),
    )
    line = orjson.dumps(cassette.to_record("k", entry))
    (loaded,) = cassette.parse([line], "shared")
    assert loaded.entry.body == entry.body and loaded.indexes == ()


@pytest.mark.parametrize(
    "previous",
    [
        "resp_" + "bGl0ZWxsbTpjdXN0b21fbGxtX3Byb3ZpZGVy" * 4 + "==",  # LiteLLM's form
        "resp_a+b/c=",
        "r" * 129,
        "",
        7,
        ["resp_1"],
    ],
)
@pytest.mark.parametrize("scope", list(CacheScope))
@pytest.mark.parametrize("mode", [CacheMode.READWRITE, CacheMode.RECORD])
def test_a_chain_on_an_id_the_proxy_cannot_track_is_never_cached(
    previous: object, scope: CacheScope, mode: CacheMode
) -> None:
    """Neither its deletion nor its holders can be known (proxy/server/chains.py)."""
    call = decide(
        routes.RESPONSES,
        {**BODY, "previous_response_id": previous},
        rules=Rules(cache_scope=scope, cache_mode=mode),
    )
    assert (call.plan.lookup, call.plan.store, call.plan.outcome) == (False, False, Outcome.BYPASS)
    tracked = decide(routes.RESPONSES, {**BODY, "previous_response_id": "resp_1"})
    assert tracked.plan.lookup and tracked.plan.store and tracked.chained == "resp_1"


@pytest.mark.parametrize(
    "items",
    [
        [{"type": "item_reference", "id": "msg_1"}],
        [{"id": "msg_1"}],
        [{"type": "reasoning", "id": "rs_1"}],
        [{"role": "user", "content": "Hi."}, {"type": "item_reference", "id": "msg_1"}],
    ],
)
def test_a_request_naming_a_stored_item_by_its_id_alone_is_never_cached(
    items: list[dict[str, str]],
) -> None:
    call = decide(routes.RESPONSES, {**BODY, "input": items})
    assert (call.plan.lookup, call.plan.store) == (False, False)
    inline = [{"type": "message", "id": "msg_1", "role": "user", "content": "Hi."}]
    assert decide(routes.RESPONSES, {**BODY, "input": inline}).plan.store  # carried whole


def test_a_response_ids_index_names_the_routing_query_and_not_the_api_version() -> None:
    """An answer routed by a query parameter may carry any id (tests/e2e/test_e2e_attack_pass3.py):
    its index entry is not the one a chain or fetch sent without that parameter looks up."""
    plain = responses.index_key("shared", "", "resp_1", "", "2025-04-01")
    assert (
        responses.index_key("shared", "", "resp_1", "", "2025-04-01", "api-version=2025-04-01")
        == plain
    )
    routed = {
        responses.index_key("shared", "", "resp_1", "", "2025-04-01", query)
        for query in ("provider=own", "provider=other", "api-version=2025-04-01&provider=own", "x=")
    }
    assert plain not in routed and len(routed) == 3  # api-version beside provider=own: the same
