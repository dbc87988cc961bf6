"""The fingerprint of a streamed answer (proxy/core/sse.py): the first non-null one its chunks
name, whatever chunks before it carried; a stream naming two is no single backend's answer, and
is neither stored nor taught to the model's tracking."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.routes import CHAT, RESPONSES
from proxy.core.sse import StreamRecorder
from proxy.server.verify import fresh_fingerprint

MISSING = object()
ROLE = {"role": "assistant", "content": "", "refusal": None}


def chunk(fingerprint: object, delta: dict[str, Any], finish: str | None = None) -> bytes:
    """A chat chunk naming `fingerprint` (MISSING: no such field); the end-to-end tests send
    these too."""
    event: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if fingerprint is not MISSING:
        event["system_fingerprint"] = fingerprint
    return b"data: " + orjson.dumps(event) + b"\n\n"


def stream(*fingerprints: object, done: bool = True) -> bytes:
    """A role chunk, a token chunk per fingerprint but the last, a finish chunk, `[DONE]`."""
    first, *middle, last = fingerprints
    parts = [chunk(first, ROLE)]
    parts += [chunk(fingerprint, {"content": "x"}) for fingerprint in middle]
    parts.append(chunk(last, {}, "stop"))
    return b"".join(parts) + (b"data: [DONE]\n\n" if done else b"")


def recorded(data: bytes, typed: bool = False) -> StreamRecorder:
    recorder = StreamRecorder(1 << 20, RESPONSES if typed else CHAT)
    recorder.feed(data)
    return recorder


@pytest.mark.parametrize(
    "fingerprints",
    [
        (None, "fp_x", "fp_x"),
        (MISSING, "fp_x", "fp_x"),
        (None, None, "fp_x"),
        ("fp_x", None, "fp_x"),
        ("fp_x", MISSING, None),
    ],
    ids=["null-first", "missing-first", "named-last", "null-between", "named-first"],
)
def test_a_stream_is_named_by_its_first_non_null_fingerprint(
    fingerprints: tuple[object, ...],
) -> None:
    """OpenAI's first chunk sometimes carries a null fingerprint, the rest the real one: the
    stream was stored as `none`, an answer of no fingerprint, which `follow` never serves
    once the model's current one is known, and a rotation away from fp_x would not retire."""
    recorder = recorded(stream(*fingerprints))
    assert recorder.complete
    assert (recorder.fingerprint, recorder.taught) == ("fp_x", "fp_x")


@pytest.mark.parametrize(
    "fingerprints",
    [
        ("fp_x", "fp_y", "fp_y"),
        (None, "fp_x", "fp_y"),
        ("fp_x", None, "fp_y"),
        ("fp_x", "fp x", "fp_x"),
        ("fp_x", "f" * 500, "fp_x"),
        ("fp_x", 7, "fp_x"),
        ("fp_x", {"fp": "x"}, "fp_x"),
        ("fp_x", "", "fp_x"),
        ("fp x", "fp_x", "fp_x"),
        (7, "7", "7"),
        ("fp!", "fp?", None),
    ],
    ids=[
        "two",
        "two-after-null",
        "null-between-two",
        "ill-formed-later",
        "too-long-later",
        "number-later",
        "object-later",
        "empty-later",
        "ill-formed-first",
        "number-then-its-spelling",
        "two-ill-formed",
    ],
)
def test_a_stream_naming_two_fingerprints_is_never_stored_nor_taught(
    fingerprints: tuple[object, ...],
) -> None:
    """An ill-formed value (which the headers and labels call `none`) is a claim as much as a
    valid one: it names something, and not the stream's fingerprint."""
    recorder = recorded(stream(*fingerprints))
    assert recorder.failed and not recorder.complete and not recorder.answered
    assert recorder.taught is None
    assert fresh_fingerprint(stream(*fingerprints), stream=True) is None


def test_the_same_ill_formed_fingerprint_throughout_is_stored_as_none() -> None:
    """As a whole answer with one is: the value is not trusted as a name, but the stream is
    one backend's answer."""
    recorder = recorded(stream("fp x", "fp x", None))
    assert recorder.complete and (recorder.fingerprint, recorder.taught) == ("none", "none")


def test_a_stream_naming_no_fingerprint_teaches_none_only_once_it_ended_cleanly() -> None:
    """Cut before a chunk named one, the stream's fingerprint is unknown (its next chunk
    might have named fp_x): learned as `none`, it would rotate the model away and back."""
    whole = recorded(stream(None, None, None))
    assert whole.complete and (whole.fingerprint, whole.taught) == (None, "none")
    cut = recorded(stream(None, None, None, done=False))
    assert not cut.answered and cut.taught is None
    named = recorded(stream(None, "fp_x", None, done=False))
    assert not named.answered and named.taught == "fp_x"


def test_a_role_chunk_with_a_null_fingerprint_does_not_name_the_head() -> None:
    """The head (X-Repro-Fingerprint) waits for the chunk naming fp_x, which carries the
    client's first token anyway; a stream that names none gets its head with its first
    token."""
    recorder = StreamRecorder(1 << 20)
    recorder.feed(chunk(None, ROLE))
    assert not recorder.named
    recorder.feed(chunk("fp_x", {"content": "Hi"}))
    assert recorder.named and recorder.fingerprint == "fp_x"
    nameless = StreamRecorder(1 << 20)
    nameless.feed(chunk(None, ROLE))
    nameless.feed(chunk(None, {"tool_calls": [{"index": 0, "id": "call_1"}]}))
    assert nameless.named and nameless.fingerprint is None
    first = StreamRecorder(1 << 20)
    first.feed(chunk("fp_x", ROLE))
    assert first.named


def typed(kind: str, **fields: Any) -> bytes:
    event = orjson.dumps({"type": kind, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + event + b"\n\n"


RESPONSE = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}
COMPLETED = {**RESPONSE, "status": "completed"}


def test_a_typed_stream_follows_the_same_rule() -> None:
    """The Responses API's events may carry a fingerprint, on the event or its response."""
    created = typed("response.created", response={**RESPONSE, "system_fingerprint": None})
    delta = typed("response.output_text.delta", delta="x", system_fingerprint="fp_x")
    done_x = typed("response.completed", response={**COMPLETED, "system_fingerprint": "fp_x"})
    done_y = typed("response.completed", response={**COMPLETED, "system_fingerprint": "fp_y"})
    named = recorded(created + delta + done_x, typed=True)
    assert named.complete and named.fingerprint == "fp_x"
    assert recorded(created + done_x, typed=True).fingerprint == "fp_x"
    two = recorded(created + delta + done_y, typed=True)
    assert not two.complete and two.taught is None


CLAIMS = st.sampled_from([MISSING, None, "fp_a", "fp_b", "fp a", 7])


@given(st.lists(CLAIMS, min_size=2, max_size=6))
def test_the_rule_over_any_sequence_of_chunks(fingerprints: list[object]) -> None:
    claims = [f for f in fingerprints if f is not MISSING and f is not None]
    recorder = recorded(stream(*fingerprints))
    distinct = {orjson.dumps(claim) for claim in claims}
    assert recorder.complete == (len(distinct) <= 1)
    if len(distinct) == 1:
        first = claims[0]
        label = first if first in ("fp_a", "fp_b") else "none"
        assert (recorder.fingerprint, recorder.taught) == (label, label)
    elif not claims:
        assert (recorder.fingerprint, recorder.taught) == (None, "none")
