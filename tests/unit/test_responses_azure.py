"""Unit tests of the Responses API and Azure OpenAI rules (pure): keys, seed, plan, answers,
typed-event streams, the id index, and the paths and queries Azure requests may carry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.core import responses, routes
from proxy.core.call import Asked, Call, prepare_with
from proxy.core.canonical import CHAT, EMBEDDINGS, RESPONSES, key_view, request_key
from proxy.core.codec import Codec
from proxy.core.entry import CorruptEntry, is_answer, usage_of
from proxy.core.paths import forward_target
from proxy.core.policy import CacheMode, CacheScope, Enforce, Outcome, enforce
from proxy.core.sse import StreamRecorder
from proxy.errors import InvalidParameter, InvalidPath
from proxy.server.verify import answer_text, fresh_fingerprint

BODY: dict[str, Any] = {"model": "gpt-4o-mini", "input": "Name a colour."}


@dataclass(frozen=True)
class Rules:
    enforce: Enforce = Enforce.SEED
    default_seed: int = 12345
    cache_scope: CacheScope = CacheScope.KEY
    cache_mode: CacheMode = CacheMode.READWRITE
    stale_if_error: int = 0


def decide(route: str, body: dict[str, Any], query: str = "", rules: Rules = Rules()) -> Call:
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer sk-a"}))
    asked = Asked.of(route, query, orjson.dumps(body), headers)
    return prepare_with(rules, "tenant-a", asked)


def sent(call: Call) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(call.body)
    return body


# --- the key ---------------------------------------------------------------------------------


def test_responses_defaults_do_not_change_the_key() -> None:
    noisy = {
        **BODY,
        "temperature": 1.0,
        "top_p": 1,
        "stream": False,
        "background": False,
        "parallel_tool_calls": True,
        "truncation": "disabled",
        "tool_choice": "auto",
        "text": {"format": {"type": "text"}},
        "metadata": {},
        "user": None,
        "store": True,
        "previous_response_id": None,
    }
    assert key_view(RESPONSES, noisy) == BODY
    assert request_key(RESPONSES, "s", "", noisy) == request_key(RESPONSES, "s", "", BODY)


@pytest.mark.parametrize(
    "extra",
    [
        {"instructions": "Be brief."},
        {"input": [{"role": "user", "content": "Name a colour."}]},
        {"tools": [{"type": "function", "name": "f", "parameters": {}}]},
        {"previous_response_id": "resp_1"},
        {"conversation": "conv_1"},
        {"include": ["reasoning.encrypted_content"]},
        {"text": {"format": {"type": "json_object"}}},
        {"reasoning": {"effort": "low"}},
        # echoed in the answer: served to other labels, it would hand over another caller's
        {"metadata": {"run": "7"}},
        {"user": "u-1"},
        {"safety_identifier": "hash-1"},
        {"prompt_cache_key": "pck"},
        {"prompt_cache_retention": "24h"},
        {"temperature": 0.2},
        {"top_p": 0.5},
        {"max_output_tokens": 50},
        {"stream": True},
        {"tool_choice": "required"},
        {"truncation": "auto"},
        {"store": False},
    ],
)
def test_everything_that_can_change_a_response_changes_the_key(extra: dict[str, Any]) -> None:
    assert request_key(RESPONSES, "s", "", {**BODY, **extra}) != request_key(
        RESPONSES, "s", "", BODY
    )


def test_an_answer_the_upstream_did_not_keep_never_answers_a_request_that_asks_it_to() -> None:
    """Its id would be fetched or chained later (`previous_response_id`, stored chat
    completions) and the upstream would not know it."""
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    assert request_key(CHAT, "s", "", {**chat, "store": True}) != request_key(CHAT, "s", "", chat)
    assert request_key(CHAT, "s", "", {**chat, "store": False}) == request_key(CHAT, "s", "", chat)
    kept, dropped = {**BODY, "store": True}, {**BODY, "store": False}
    assert request_key(RESPONSES, "s", "", kept) == request_key(RESPONSES, "s", "", BODY)
    assert request_key(RESPONSES, "s", "", dropped) != request_key(RESPONSES, "s", "", BODY)


def test_responses_and_chat_with_one_body_never_share_a_key() -> None:
    assert request_key(RESPONSES, "s", "", BODY) != request_key(CHAT, "s", "", BODY)


def test_an_azure_route_keys_with_the_defaults_of_its_openai_counterpart() -> None:
    route = "/openai/deployments/dep-1/chat/completions"
    body = {"messages": [], "temperature": 1, "top_p": 1, "user": "x"}
    assert key_view(route, body) == {"messages": []}
    assert key_view("/openai/v1/responses", {**BODY, "truncation": "disabled"}) == BODY


def test_deployment_and_api_version_are_part_of_the_key() -> None:
    one = decide("/openai/deployments/dep-1/chat/completions", {"messages": []}, "api-version=1")
    other_version = decide(
        "/openai/deployments/dep-1/chat/completions", {"messages": []}, "api-version=2"
    )
    other_deployment = decide(
        "/openai/deployments/dep-2/chat/completions", {"messages": []}, "api-version=1"
    )
    assert len({one.key, other_version.key, other_deployment.key}) == 3
    assert one.model == "dep-1" and one.kind == CHAT


# --- seed and strict -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(Enforce))
def test_no_seed_is_ever_added_to_a_responses_body(mode: Enforce) -> None:
    for route in (RESPONSES, "/openai/v1/responses", routes.AZURE_RESPONSES):
        call = decide(route, BODY, rules=Rules(enforce=mode))
        assert "seed" not in sent(call)
        assert call.seed is None and call.seed_source is None


def test_strict_pins_temperature_and_top_p_on_responses() -> None:
    call = decide(RESPONSES, {**BODY, "temperature": 0.9}, rules=Rules(enforce=Enforce.STRICT))
    assert sent(call) == {**BODY, "temperature": 0, "top_p": 1}


@pytest.mark.parametrize(
    "body",
    [
        {"model": "o3-mini", "input": "x"},
        {"model": "gpt-5", "input": "x"},
        {"model": "gpt-4o", "input": "x", "reasoning": {"effort": "low"}},
    ],
)
def test_strict_leaves_reasoning_models_alone_since_they_refuse_temperature(
    body: dict[str, Any],
) -> None:
    assert enforce(body, RESPONSES, Enforce.STRICT, 1).body == body


def test_azure_deployment_routes_get_the_seed_chat_gets() -> None:
    call = decide("/openai/deployments/dep/chat/completions", {"messages": []}, "api-version=1")
    assert sent(call)["seed"] == 12345 and call.seed_source == "default"
    embeddings = decide("/openai/deployments/dep/embeddings", {"input": "x"}, "api-version=1")
    assert "seed" not in sent(embeddings) and embeddings.kind == EMBEDDINGS


# --- background ------------------------------------------------------------------------------


def test_a_background_response_is_never_cached() -> None:
    plan = decide(RESPONSES, {**BODY, "background": True}).plan
    assert (plan.lookup, plan.store, plan.upstream, plan.outcome) == (
        False,
        False,
        True,
        Outcome.BYPASS,
    )


@pytest.mark.parametrize(
    "state",
    [
        {"conversation": "conv_1"},
        {"conversation": {"id": "c"}},
        {"prompt": {"id": "pmpt_1"}},
        {"prompt": "pmpt_1"},  # not the API's shape: whatever an upstream makes of it, unpinned
        {"prompt": ["pmpt_1", "2"]},
    ],
)
def test_a_response_reading_state_the_upstream_changes_is_never_cached(
    state: dict[str, Any],
) -> None:
    plan = decide(RESPONSES, {**BODY, **state}).plan
    assert (plan.lookup, plan.store, plan.outcome) == (False, False, Outcome.BYPASS)
    pinned = decide(RESPONSES, {**BODY, "prompt": {"id": "pmpt_1", "version": "2"}}).plan
    assert pinned.lookup and pinned.store


def test_a_background_response_in_replay_mode_never_reaches_the_upstream() -> None:
    replay = Rules(cache_mode=CacheMode.REPLAY)
    plan = decide(RESPONSES, {**BODY, "background": True}, rules=replay).plan
    assert not plan.upstream and not plan.store


@pytest.mark.parametrize(
    "body",
    [
        {**BODY, "background": True},
        {**BODY, "conversation": "conv_1"},
        {**BODY, "model": "m" * 1000},  # named longer than any model the proxy tracks
    ],
)
def test_only_if_cached_never_reaches_the_upstream_for_a_request_never_cached(
    body: dict[str, Any],
) -> None:
    """RFC 9111: a stored response or a 504. A request the proxy never caches has none, and
    forwarded it would queue a job, or add a turn to a conversation, the client did not ask for."""
    headers = {"Authorization": "Bearer sk-a", "Cache-Control": "only-if-cached"}
    asked = Asked.of(RESPONSES, "", orjson.dumps(body), CIMultiDictProxy(CIMultiDict(headers)))
    plan = prepare_with(Rules(), "tenant-a", asked).plan
    assert (plan.lookup, plan.store, plan.upstream) == (False, False, False)


def test_responses_keep_a_fingerprint_history_apart_from_chat() -> None:
    assert decide(RESPONSES, BODY).lineage == "gpt-4o-mini@responses"
    assert decide(CHAT, {"model": "gpt-4o-mini", "messages": []}).lineage == "gpt-4o-mini"


def test_a_deployment_keeps_its_fingerprint_history_whatever_model_the_body_names() -> None:
    route = "/openai/deployments/mini/chat/completions"
    call = decide(route, {"model": "gpt-4o", "messages": []})
    assert (call.lineage, call.model) == ("mini", "gpt-4o")
    assert routes.lineage("dep-1", "/openai/v1/chat/completions") == "dep-1"


# --- answers ---------------------------------------------------------------------------------

COMPLETED = {"object": "response", "status": "completed", "output": [], "id": "resp_1"}


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"message": "boom"}},
        {"object": "response", "status": "failed", "output": []},
        {"object": "response", "status": "incomplete", "output": []},
        {"object": "response", "status": "queued", "output": []},
        {"object": "response", "status": "completed", "output": "not a list"},
        {"output": [], "status": "completed"},
        {**COMPLETED, "error": {"code": "server_error", "message": "boom"}},
    ],
)
def test_only_a_completed_response_object_is_an_answer(body: dict[str, Any]) -> None:
    assert not is_answer(body, responses=True)
    assert is_answer(COMPLETED, responses=True)


def test_responses_usage_counts_input_and_output_tokens() -> None:
    assert usage_of({"usage": {"input_tokens": 7, "output_tokens": 3}}) == (7, 3)
    assert usage_of({"usage": {"input_tokens": "7", "output_tokens": None}}) == (0, 0)


# --- typed-event streams ---------------------------------------------------------------------


def typed(kind: str, **fields: Any) -> bytes:
    return (
        b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"
    )


RESPONSE = {"id": "resp_abc", "object": "response", "status": "in_progress", "output": []}
DONE = {**RESPONSE, "status": "completed", "usage": {"input_tokens": 4, "output_tokens": 2}}
START = typed("response.created", response=RESPONSE, sequence_number=0) + typed(
    "response.output_text.delta", delta="Hi", sequence_number=1
)
END = typed("response.completed", response=DONE, sequence_number=2)


def record(data: bytes, split: int = 7) -> StreamRecorder:
    recorder = StreamRecorder(1 << 20, routes.RESPONSES)
    for start in range(0, len(data), split):
        recorder.feed(data[start : start + split])
    return recorder


def test_a_typed_stream_is_complete_after_response_completed() -> None:
    recorder = record(START + END)
    assert recorder.complete
    assert recorder.body() == START + END
    assert (recorder.prompt_tokens, recorder.completion_tokens) == (4, 2)
    assert recorder.response_id == "resp_abc"
    assert recorder.fingerprint is None


@pytest.mark.parametrize(
    "ending",
    [
        b"",  # cut
        typed("response.failed", response={**RESPONSE, "status": "failed"}, sequence_number=2),
        typed("response.incomplete", response={**RESPONSE, "status": "incomplete"}),
        typed("error", code="server_error", message="boom", sequence_number=2),
        b"data: [DONE]\n\n",
        b"data: {not json}\n\n",
    ],
)
def test_a_typed_stream_that_does_not_complete_is_never_complete(ending: bytes) -> None:
    assert not record(START + ending).complete


def test_an_error_event_spoils_a_stream_even_if_completed_follows() -> None:
    assert not record(START + typed("error", message="x") + END).complete


@pytest.mark.parametrize(
    "frame",
    [
        typed("response.output_text.delta", delta="!").replace(
            b"event: response.output_", b"event: error\nevent: response.output_"
        ),
        typed("response.output_text.delta", delta="!").replace(
            b"event: response.output_text.delta", b"event: response.failed"
        ),
        typed("response.output_text.delta", delta="!").replace(
            b"event: response.output_text.delta", b"event: error"
        ),
        b"event: response.failed\n\n",
    ],
    ids=["two-names", "failed-above-a-delta", "error-above-a-delta", "failed-without-data"],
)
def test_a_typed_frame_named_otherwise_than_its_type_spoils_the_stream(frame: bytes) -> None:
    assert record(START + END).complete
    assert not record(START + frame + END).complete


def test_a_stream_whose_events_name_two_responses_is_no_answer() -> None:
    """The SDK takes the id from `response.created`; stored, the answer was filed under the
    id `response.completed` named, and a fetch by the id the client had found nothing."""
    other = typed("response.completed", response={**DONE, "id": "resp_other"}, sequence_number=2)
    recorder = record(START + other)
    assert not recorder.complete
    assert record(START + END).response_id == "resp_abc"


def test_a_completed_event_whose_response_did_not_complete_is_not_a_clean_end() -> None:
    bad = typed("response.completed", response={**RESPONSE, "status": "failed"})
    assert not record(START + bad).complete


def test_a_system_fingerprint_in_a_response_is_picked_up() -> None:
    created = typed("response.created", response={**RESPONSE, "system_fingerprint": "fp_r1"})
    assert record(created + END).fingerprint == "fp_r1"
    top = typed("response.created", response=RESPONSE, system_fingerprint="fp_top")
    assert record(top + END).fingerprint == "fp_top"


def test_a_chat_recorder_still_needs_done() -> None:
    chunk = b'data: {"choices":[{"finish_reason":"stop"}]}\n\n'
    recorder = StreamRecorder(1 << 20)
    recorder.feed(chunk)
    assert not recorder.complete
    recorder.feed(b"data: [DONE]\n\n")
    assert recorder.complete


# --- the id index ----------------------------------------------------------------------------


def test_the_index_key_depends_on_scope_namespace_and_id() -> None:
    keys = {
        responses.index_key("tenant-a", "", "resp_1"),
        responses.index_key("tenant-b", "", "resp_1"),
        responses.index_key("tenant-a", "ns", "resp_1"),
        responses.index_key("tenant-a", "", "resp_2"),
        responses.index_key("tenant-a", "", "resp_1", version="2025-03-01-preview"),
        responses.index_key("tenant-a", "", "resp_1", version="2025-04-01-preview"),
    }
    assert len(keys) == 6
    assert responses.index_key("t", "", "resp_1", version="") == responses.index_key(
        "t", "", "resp_1"
    )


def test_a_response_the_upstream_did_not_keep_has_no_id_to_find_it_by() -> None:
    assert responses.id_of({**COMPLETED, "store": True}) == "resp_1"
    assert responses.id_of({**COMPLETED, "store": False}) is None
    unkept = orjson.dumps({**COMPLETED, "store": False})
    assert responses.stored_id(unkept, stream=False) is None


def test_a_streamed_response_the_upstream_did_not_keep_has_no_id_to_find_it_by_either() -> None:
    unkept = {**DONE, "store": False}
    stream = typed("response.created", response={**RESPONSE, "store": False}, sequence_number=0)
    recorder = record(stream + typed("response.completed", response=unkept, sequence_number=1))
    assert recorder.complete and recorder.response_id is None
    assert record(START + END).response_id == "resp_abc"


def test_the_marks_of_a_deletion_and_a_holder_are_keys_of_their_own() -> None:
    """No mark may equal another's, an index entry's or a request's key (their domains differ),
    and a holder's names both the tenant and the entry."""
    keys = {
        responses.deleted_key("resp_1"),
        responses.deleted_key("resp_2"),
        responses.holder_key("tenant-a", "k" * 64),
        responses.holder_key("tenant-b", "k" * 64),
        responses.holder_key("tenant-a", "j" * 64),
        responses.index_key("resp_1", "", "resp_1"),
        request_key(RESPONSES, "shared", "", {"id": "resp_1"}),
    }
    assert len(keys) == 7


@pytest.mark.parametrize(
    ("body", "chained"),
    [
        ({"previous_response_id": "resp_1"}, "resp_1"),
        ({"previous_response_id": None}, None),
        ({"previous_response_id": 7}, None),
        ({"previous_response_id": ["resp_1"]}, None),
        ({"previous_response_id": "r" * 129}, None),
        ({"previous_response_id": "resp_1\r\nX: y"}, None),
    ],
)
def test_a_call_names_the_response_it_continues_only_when_it_is_a_plain_id(
    body: dict[str, Any], chained: str | None
) -> None:
    assert decide(routes.RESPONSES, {**BODY, **body}).chained == chained
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    assert decide(routes.CHAT, {**chat, **body}).chained is None


@pytest.mark.parametrize(
    ("query", "fetch"),
    [
        ("", responses.Fetch(False, "")),
        ("stream=true", responses.Fetch(True, "")),
        ("stream=false", responses.Fetch(False, "")),
        ("api-version=2025-03-01-preview", responses.Fetch(False, "2025-03-01-preview")),
        ("Api-Version=v1&stream=true", responses.Fetch(True, "v1")),
        ("include[]=message.output_text.logprobs", None),
        ("include=reasoning.encrypted_content", None),
        ("stream=true&starting_after=3", None),
        ("include_obfuscation=false", None),
        ("stream=1", None),
        ("stream=true&stream=false", None),
        ("api-version=a&API-VERSION=b", None),
        ("a;stream=true", None),
        ("provider=x", responses.Fetch(False, "", "provider=x")),
        (
            "provider=x&stream=true&api-version=v1&b=%26",
            responses.Fetch(True, "v1", "provider=x&b=%26"),
        ),
    ],
)
def test_a_fetch_is_answered_only_for_what_a_stored_response_holds(
    query: str, fetch: responses.Fetch | None
) -> None:
    assert responses.fetch_of(query) == fetch


def test_the_api_version_a_query_names() -> None:
    assert responses.api_version("") == ""
    assert responses.api_version("api-version=v1") == "v1"
    assert responses.api_version("API-version=v1&x=1") == "v1"
    assert responses.api_version("api-version=a&Api-Version=b") is None


def test_an_index_value_round_trips_and_hostile_values_are_refused() -> None:
    key = "a" * 64
    assert responses.parse_index(responses.index_value(key, "fp_1")) == (key, "fp_1")
    for hostile in (b"", b"repro-index:1:", b"repro-index:1:[1,2]", b'repro-index:1:["../x","f"]'):
        assert responses.parse_index(hostile) is None


@pytest.mark.parametrize("value", ["", "a/b", "../x", "x" * 129, "resp 1", "r%2F"])
def test_only_plain_short_ids_are_looked_up(value: str) -> None:
    assert not responses.valid_id(value)
    assert responses.id_of({"id": value}) is None


def test_a_streamed_response_is_found_again_as_its_completed_object() -> None:
    assert orjson.loads(responses.final_response(START + END) or b"") == DONE
    assert responses.final_response(START + END + b"data: [DONE]\n\n") is not None
    assert responses.final_response(START) is None


# --- Azure paths and queries -----------------------------------------------------------------


def test_azure_routes_stand_for_their_openai_counterparts() -> None:
    assert routes.kind("/openai/deployments/d/chat/completions") == CHAT
    assert routes.kind("/openai/deployments/d/embeddings") == EMBEDDINGS
    assert routes.kind("/openai/v1/responses") == RESPONSES
    assert routes.kind("/openai/responses") == RESPONSES
    assert routes.kind(CHAT) == CHAT


@pytest.mark.parametrize("name", ["..", ".", "a%2Fb", "a/b", "", "-x" * 40, "a b", "%2e%2e"])
def test_a_deployment_name_must_be_plain(name: str) -> None:
    with pytest.raises(InvalidPath):
        routes.check_deployment(name)


def test_an_azure_path_sent_with_dot_segments_or_escapes_is_refused() -> None:
    path = "/openai/deployments/b/chat/completions"
    assert routes.azure_target(path, path + "?api-version=1", "api-version=1") == (
        path,
        "api-version=1",
    )
    for raw in (
        "/openai/deployments/a/../b/chat/completions",
        "/openai/deployments/%62/chat/completions",
    ):
        with pytest.raises(InvalidPath):
            routes.azure_target(path, raw, "")


@pytest.mark.parametrize(
    "query",
    [
        "api-version=1&api-version=2",
        "api-version=" + "9" * 1000,
        "api-version=a%2Fb",
        "api-version=",
        "api-version=1&API-Version=2",
        "api%2Dversion=1&api-version=2",
        "api-version=1;api-version=2",
        "api-version=%C3%A9",
        "api-version=1%0D%0AX-Evil:%201",
    ],
)
def test_a_query_with_a_repeated_or_odd_api_version_is_refused(query: str) -> None:
    with pytest.raises(InvalidParameter):
        routes.check_query(query)


def test_azure_pass_through_paths_stay_under_openai() -> None:
    assert forward_target("/openai/files?api-version=1") == "/openai/files?api-version=1"
    for raw in ("/openai/../v1/files", "/openai/%2e%2e/admin", "/openai/.."):
        with pytest.raises(InvalidPath):
            forward_target(raw)


# --- drift sampling --------------------------------------------------------------------------


def test_drift_sampling_reads_the_text_of_whole_and_streamed_responses() -> None:
    output = [
        {"type": "message", "content": [{"type": "output_text", "text": "Hi there."}]},
        {"type": "function_call", "name": "f", "arguments": '{"a":1}'},
    ]
    whole = orjson.dumps({"object": "response", "status": "completed", "output": output})
    assert answer_text(whole, stream=False) == 'Hi there.f{"a":1}'
    streamed = START + typed("response.completed", response={**DONE, "output": output})
    assert answer_text(streamed, stream=True) == 'Hi there.f{"a":1}'
    fingerprinted = typed("response.created", response={**RESPONSE, "system_fingerprint": "fp_9"})
    assert fresh_fingerprint(fingerprinted + END, stream=True, kind=routes.RESPONSES) == "fp_9"


def test_an_index_entry_is_never_read_as_an_answer() -> None:
    with pytest.raises(CorruptEntry):
        Codec().unpack(responses.index_value("a" * 64, "none"))
