"""What the API added since the proxy's rules were written, read from the official SDK's types
(openai 3.63.0, generated from the current OpenAPI spec): requests that ask about the upstream's
prompt cache rather than for an answer, answers whose requested moderation failed, and chat
audio ids that die upstream at their `expires_at`."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Settings
from proxy.core.call import Asked, Call, prepare_with
from proxy.core.entry import answer_of, expires_at, moderation_failed
from proxy.core.policy import Outcome
from proxy.core.routes import CHAT, RESPONSES
from proxy.core.sse import StreamRecorder

ASK = {"model": "gpt-5.6", "input": "Name a colour."}


def call(route: str, body: dict[str, Any]) -> Call:
    asked = Asked.of(route, "", orjson.dumps(body), CIMultiDictProxy(CIMultiDict()))
    return prepare_with(Settings(), "t", asked)


# ResponseCreateParams.prompt_cache_options: `prewarm` "Prepares the prompt cache without
# generating output"; `comparison_response_id` "Supplying this field requests prompt cache
# diagnostics" (Response.prompt_cache_diagnostics: cache_hit, cache_miss with a reason, ...).
@pytest.mark.parametrize(
    "options",
    [
        {"prewarm": True},
        {"prewarm": 1},
        {"comparison_response_id": "resp_abc"},
        {"mode": "explicit", "comparison_response_id": "resp_abc"},
    ],
)
def test_a_request_probing_the_upstreams_prompt_cache_is_never_cached(
    options: dict[str, Any],
) -> None:
    plan = call(RESPONSES, {**ASK, "prompt_cache_options": options}).plan
    assert plan.outcome is Outcome.BYPASS
    assert not plan.lookup and not plan.store
    # Chat's key leaves prompt_cache_options out: a prewarm there would take the plain key.
    messages = [{"role": "user", "content": "Name a colour."}]
    chat = {"model": "gpt-5.6", "messages": messages, "prompt_cache_options": options}
    assert call(CHAT, chat).plan.outcome is Outcome.BYPASS


@pytest.mark.parametrize(
    "options",
    [{"ttl": "12h"}, {"mode": "explicit"}, {"prewarm": False}, {"comparison_response_id": None}],
)
def test_prompt_cache_options_that_only_hint_are_cached(options: dict[str, Any]) -> None:
    plan = call(RESPONSES, {**ASK, "prompt_cache_options": options}).plan
    assert plan.lookup and plan.store
    messages = [{"role": "user", "content": "Name a colour."}]
    chat = call(CHAT, {"model": "gpt-5.6", "messages": messages, "prompt_cache_options": options})
    assert chat.plan.lookup and chat.plan.store


RESULTS = {"type": "moderation_results", "model": "omni-moderation-latest", "results": []}
FAILED = {"type": "error", "code": "moderation_unavailable", "message": "try again"}
MESSAGE = {"role": "assistant", "content": "Blue."}


def chat_answer(**beside: Any) -> bytes:
    choice = {"index": 0, "message": MESSAGE, "finish_reason": "stop"}
    return orjson.dumps({"object": "chat.completion", "choices": [choice], **beside})


def response_answer(**beside: Any) -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "status": "completed", "output": [], **beside}


# ChatCompletion.moderation / Response.moderation: input and output are each
# `moderation_results` or an `error` "produced while attempting moderation".
@pytest.mark.parametrize(
    "moderation",
    [{"input": FAILED, "output": RESULTS}, {"input": RESULTS, "output": FAILED}],
)
def test_an_answer_whose_moderation_failed_is_not_stored(moderation: dict[str, Any]) -> None:
    assert moderation_failed({"moderation": moderation})
    assert answer_of(chat_answer(moderation=moderation), False, "message") is None
    whole = orjson.dumps(response_answer(moderation=moderation))
    assert answer_of(whole, True, None) is None


def test_an_answer_with_its_moderation_is_stored() -> None:
    moderation = {"input": RESULTS, "output": RESULTS}
    assert answer_of(chat_answer(moderation=moderation), False, "message") is not None
    assert answer_of(chat_answer(moderation=None), False, "message") is not None
    assert answer_of(orjson.dumps(response_answer(moderation=moderation)), True, None)


def frames(*events: object) -> bytes:
    return b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in events)


def recorded(data: bytes, responses: bool = False) -> StreamRecorder:
    recorder = StreamRecorder(1 << 20, RESPONSES if responses else CHAT)
    recorder.feed(data)
    return recorder


def chunk(**beside: Any) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", **beside}


@pytest.mark.parametrize("failed", [True, False])
def test_a_chat_stream_whose_moderation_chunk_failed_is_answered_but_not_stored(
    failed: bool,
) -> None:
    moderation = {"input": RESULTS, "output": FAILED if failed else RESULTS}
    stream = (
        frames(
            chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": "Blue."}}]),
            chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            chunk(choices=[], moderation=moderation),
        )
        + b"data: [DONE]\n\n"
    )
    recorder = recorded(stream)
    assert recorder.answered  # the client got its answer, and the key works
    assert recorder.complete is not failed


@pytest.mark.parametrize("failed", [True, False])
def test_a_responses_stream_completed_with_failed_moderation_is_not_stored(failed: bool) -> None:
    moderation = {"input": FAILED if failed else RESULTS, "output": RESULTS}
    completed = response_answer(moderation=moderation)
    stream = frames(
        {"type": "response.created", "response": {**completed, "status": "in_progress"}},
        {"type": "response.completed", "response": completed},
    )
    recorder = recorded(stream, responses=True)
    assert recorder.answered
    assert recorder.complete is not failed


# ChatCompletionAudio.expires_at: "when this audio response will no longer be accessible on the
# server for use in multi-turn conversations" (and ChoiceDeltaAudio.expires_at in a stream).
def test_the_earliest_expiry_a_chat_answer_names_is_read() -> None:
    audio = {"id": "audio_1", "data": "UklGRg==", "expires_at": 1_800_000_000, "transcript": "Hi"}
    later = {**audio, "expires_at": 1_800_000_500}
    whole = orjson.dumps(
        {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "audio": later}},
                {"index": 1, "message": {"role": "assistant", "audio": audio}},
            ]
        }
    )
    assert expires_at(whole) == 1_800_000_000
    spaced = b'{"choices": [{"message": {"audio": {"expires_at" :\n 17e8}}}]}'
    assert expires_at(spaced) == 1_700_000_000
    stream = frames(chunk(choices=[{"index": 0, "delta": {"audio": audio}}])) + b"data: [DONE]\n\n"
    assert expires_at(stream) == 1_800_000_000


def test_text_quoting_expires_at_names_no_expiry() -> None:
    quoted = {"role": "assistant", "content": 'Send {"expires_at": 1} to expire it.'}
    assert expires_at(chat_answer(metadata={"expires_at": "1"})) is None
    assert expires_at(orjson.dumps({"choices": [{"index": 0, "message": quoted}]})) is None
    assert expires_at(chat_answer()) is None


def skill(**version: str) -> dict[str, Any]:
    return {"type": "skill_reference", "skill_id": "skill_abc", **version}


def shell(environment: dict[str, Any]) -> dict[str, Any]:
    return {"type": "shell", "environment": environment}


# CodeInterpreter.container: "Can be a container ID"; FunctionShellToolParam.environment:
# ContainerReferenceParam ("References a container created with the /v1/containers endpoint");
# SkillReferenceParam.version: "Use a positive integer or 'latest'. Omit for default."
LIVE = [
    pytest.param({"type": "code_interpreter", "container": "cntr_abc"}, id="container-id"),
    pytest.param(shell({"type": "container_reference", "container_id": "cntr_abc"}), id="shell"),
    pytest.param(shell({"type": "container_auto", "skills": [skill()]}), id="skill-default"),
    pytest.param(
        shell({"type": "container_auto", "skills": [skill(version="latest")]}), id="latest"
    ),
]
FIXED = [
    pytest.param({"type": "code_interpreter", "container": {"type": "auto"}}, id="new-container"),
    pytest.param(shell({"type": "container_auto", "skills": [skill(version="2")]}), id="pinned"),
    pytest.param(shell({"type": "local"}), id="local"),
]


@pytest.mark.parametrize("tool", LIVE)
def test_a_tool_running_in_live_upstream_state_is_never_cached(tool: dict[str, Any]) -> None:
    plan = call(RESPONSES, {**ASK, "tools": [tool]}).plan
    assert plan.outcome is Outcome.BYPASS
    assert not plan.lookup and not plan.store


@pytest.mark.parametrize("tool", FIXED)
def test_a_tool_in_a_new_container_or_a_pinned_skill_is_cached(tool: dict[str, Any]) -> None:
    plan = call(RESPONSES, {**ASK, "tools": [tool]}).plan
    assert plan.lookup and plan.store


def test_a_container_named_in_a_past_calls_record_runs_nothing() -> None:
    past = {
        "type": "shell_call",
        "call_id": "call_1",
        "action": {"commands": ["ls"]},
        "environment": {"type": "container_reference", "container_id": "cntr_abc"},
    }
    plan = call(RESPONSES, {**ASK, "input": [past], "tools": [shell({"type": "local"})]}).plan
    assert plan.lookup and plan.store


@pytest.mark.parametrize("tool", LIVE)
def test_a_tool_added_by_an_input_item_is_read_as_a_tool(tool: dict[str, Any]) -> None:
    """ResponseInputItemParam.AdditionalTools: "A list of additional tools made available at
    this item"."""
    added = {"type": "additional_tools", "role": "developer", "tools": [tool]}
    user = {"role": "user", "content": "Name a colour."}
    plan = call(RESPONSES, {"model": "gpt-5.6", "input": [user, added]}).plan
    assert plan.outcome is Outcome.BYPASS
