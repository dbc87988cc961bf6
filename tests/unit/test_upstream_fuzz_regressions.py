"""What the upstream fuzz (tests/e2e/test_e2e_upstream_fuzz.py) found, pinned at the unit level:
a 200 body or a streamed chunk whose choices (data, output) are not a list of objects, or that
names an `error` beside its answer, is no answer: not stored, and it teaches no fingerprint."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.core.call import facts_of
from proxy.core.entry import is_answer
from proxy.core.sse import StreamRecorder

CHOICE = {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
ILL_TYPED = [None, 0, -1, 1.5, True, "", "x", {}, [None], [1], ["x"], [CHOICE, 5]]


@pytest.mark.parametrize("value", ILL_TYPED)
@pytest.mark.parametrize("name", ["choices", "data", "output"])
def test_an_answer_field_of_the_wrong_type_is_no_answer(name: str, value: object) -> None:
    body = {"object": "x", name: value, "system_fingerprint": "fp_taught"}
    assert not is_answer(body)
    assert facts_of(orjson.dumps(body), is_response=False) is None


@pytest.mark.parametrize("value", ILL_TYPED)
def test_a_completed_response_whose_output_is_not_objects_is_no_answer(value: object) -> None:
    body = {"object": "response", "status": "completed", "error": None, "output": value}
    assert not is_answer(body, responses=True)


@pytest.mark.parametrize("error", [{"message": "boom", "type": "server_error"}, "boom", 5, []])
def test_an_error_beside_an_answer_leaves_it_unsaid(error: object) -> None:
    assert not is_answer({"choices": [CHOICE], "error": error})
    assert not is_answer({"data": [{"embedding": [0.1]}], "error": error})


@pytest.mark.parametrize(
    "body",
    [
        {"choices": [CHOICE]},
        {"choices": []},
        {"choices": [CHOICE], "error": None},
        {"data": [{"object": "embedding", "embedding": [0.1], "index": 0}]},
    ],
)
def test_answers_stay_answers(body: dict[str, Any]) -> None:
    assert is_answer(body)


def _chunk(choices: object, fingerprint: str = "fp_stream") -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "system_fingerprint": fingerprint}
    return b"data: " + orjson.dumps(chunk | {"choices": choices}) + b"\n\n"


def _stream(middle: bytes) -> bytes:
    start = _chunk([{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}])
    end = _chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    return start + middle + end + b"data: [DONE]\n\n"


@pytest.mark.parametrize("value", [None, {}, "x", 0, [None], [1]])
def test_a_chunk_whose_choices_are_not_objects_spoils_the_stream(value: object) -> None:
    recorder = StreamRecorder(1 << 20)
    recorder.feed(_stream(_chunk(value)))
    assert not recorder.complete
    assert recorder.taught is None


def test_a_usage_chunk_with_no_choices_keeps_the_stream_whole() -> None:
    recorder = StreamRecorder(1 << 20)
    recorder.feed(_stream(_chunk([])))
    assert recorder.complete
    assert recorder.taught == "fp_stream"
