"""The stream recorder (proxy/core/sse.py) against the official SDK's own SSE decoder: a stream
the recorder calls complete, and so stores and replays, must be one the SDK reads to its end
without an error, and one the SDK reads cleanly should be stored whatever line ends it uses."""

from __future__ import annotations

import itertools
import json
import tracemalloc
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder

from proxy.core import responses
from proxy.core.answers import text as text_of
from proxy.core.routes import CHAT, RESPONSES
from proxy.core.sse import StreamRecorder
from proxy.server.verify import answer_text

CHUNK = {"system_fingerprint": "fp_a", "choices": [{"index": 0, "delta": {"content": "Hi é✓"}}]}
FINISH = {
    "system_fingerprint": "fp_a",
    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
}
ERROR = {"error": {"message": "overloaded", "type": "server_error"}}


def data(event: Any) -> bytes:
    return b"data: " + orjson.dumps(event)


# A stream as lines, each ended later by CRLF, LF or CR; b"" is a blank line.
CLEAN = [data(CHUNK), b"", data(FINISH), b"", b"data: [DONE]", b""]


def joined(lines: list[bytes], ends: list[bytes] | bytes = b"\n") -> bytes:
    """Each line with its end; a blank line after a CR is ended by CR too (an LF would make
    that CR a CRLF: no blank line)."""
    seps = [ends] * len(lines) if isinstance(ends, bytes) else list(ends)
    for at in range(1, len(lines)):
        if not lines[at] and seps[at - 1] == b"\r" and seps[at] == b"\n":
            seps[at] = b"\r"
    return b"".join(line + sep for line, sep in zip(lines, seps, strict=True))


def recorded(stream: bytes, cuts: list[int] | None = None, typed: bool = False) -> StreamRecorder:
    recorder = StreamRecorder(1 << 20, RESPONSES if typed else CHAT)
    start = 0
    for cut in [*sorted(set(cuts or [])), len(stream)]:
        recorder.feed(stream[start:cut])
        start = cut
    return recorder


def sdk_reads(stream: bytes, cuts: list[int] | None = None) -> bool:
    """Whether the SDK's chat stream reads this to `[DONE]` without an error, a finish_reason
    seen before it (the loop of `openai.Stream.__stream__`, on its own decoder)."""
    bounds = [0, *sorted(set(cuts or [])), len(stream)]
    pieces = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    finished = False
    try:
        for sse in SSEDecoder().iter_bytes(iter(pieces)):
            if sse.data.startswith("[DONE]"):
                return finished
            event = json.loads(sse.data)
            if isinstance(event, dict) and event.get("error"):
                return False
            finished = finished or any(c.get("finish_reason") for c in event["choices"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    return False


ENDS = st.sampled_from([b"\n", b"\r", b"\r\n"])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_line_ends_split_anywhere_read_as_the_sdk_reads_them(draw: st.DataObject) -> None:
    """CR alone ends a line as LF and CRLF do: a stream so framed was never read (never
    stored, and its head held back until its end, the first frame never found)."""
    ends = draw.draw(st.lists(ENDS, min_size=len(CLEAN), max_size=len(CLEAN)))
    stream = joined(CLEAN, ends)
    cuts = draw.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    assert sdk_reads(stream, cuts)
    recorder = recorded(stream, cuts)
    assert recorder.complete and recorder.fingerprint == "fp_a" and recorder.frames == 3
    assert recorder.body() == stream


def around(*frame: bytes) -> list[bytes]:
    """A clean stream with these lines after its first frame."""
    return [*CLEAN[:2], *frame, *CLEAN[2:]]


HOSTILE = {
    "error-after-a-cr-ended-comment": around(b": ok\r" + data(ERROR), b""),
    "retry-alone": around(b"retry: 3000", b""),
    "id-alone": around(b"id: 7", b""),
    "id-then-a-comment-frame": around(b"id: 7", data(CHUNK), b"", b": ping", b""),
    "empty-data": around(b"data:", b""),
    "comment-not-utf8": around(b": \xff", b""),
    "event-not-utf8": around(b"event: \xff", data(CHUNK), b""),
    "done-with-two-spaces": [*CLEAN[:4], b"data:  [DONE]", b""],
}


@pytest.mark.parametrize("lines", list(HOSTILE.values()), ids=list(HOSTILE))
@pytest.mark.parametrize("end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_a_stream_the_sdk_fails_on_is_never_complete(lines: list[bytes], end: bytes) -> None:
    """Each of these streams was read as a clean end by the recorder, while the SDK raises on
    it (or reads an error): stored, every later caller would get that failure replayed."""
    stream = joined(lines, end)
    assert not sdk_reads(stream)
    assert not recorded(stream).complete
    assert not recorded(stream, list(range(len(stream)))).complete


def test_a_stream_opening_with_a_byte_order_mark_is_not_complete() -> None:
    """The SDK reads the first line's field name with the mark in it, and skips the line; an
    EventSource drops the mark and reads the line: they disagree on the first event."""
    stream = b"\xef\xbb\xbf" + joined([data(ERROR), b"", *CLEAN])
    assert sdk_reads(stream)
    assert not recorded(stream).complete
    assert not recorded(stream, [1, 2]).complete


def test_done_before_the_finish_reason_is_not_a_clean_end() -> None:
    """The SDK stops reading at `[DONE]`: a finish_reason after it was never seen."""
    stream = joined([data(CHUNK), b"", b"data: [DONE]", b"", data(FINISH), b""])
    assert not sdk_reads(stream)
    assert not recorded(stream).complete


VOCABULARY = [
    data(CHUNK),
    data(FINISH),
    data(ERROR),
    b"data: [DONE]",
    b"data:",
    b"data: [DONE] x",
    b": ping",
    b"event: message",
    b"event: error",
    b"id: 1",
    b"retry: 10",
    b"",
    b"",
    b"",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(VOCABULARY), max_size=12), st.data())
def test_whatever_the_recorder_stores_the_sdk_reads_cleanly(
    lines: list[bytes], draw: st.DataObject
) -> None:
    ends = draw.draw(st.lists(ENDS, min_size=len(lines), max_size=len(lines)))
    stream = joined(lines, ends)
    cuts = draw.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    if recorded(stream, cuts).complete:
        assert sdk_reads(stream), stream


@pytest.mark.parametrize(
    ("chunk", "end"),
    [
        (b"data: 1\r\rdata: 2\r\r", 9),
        (b"data: 1\r\n\r\ndata: 2", 11),
        (b"data: 1\n\rdata: 2", 9),
        (b"data: 1\r\n\rdata: 2", 10),
        (b"data: 1\rdata: 2\r", 16),
    ],
)
def test_the_first_frame_ends_at_a_blank_line_of_any_line_ends(chunk: bytes, end: int) -> None:
    """Where the relay cuts a chunk for the head (`data: 1`, no answer, names the stream)."""
    assert len(StreamRecorder(1 << 20).feed(chunk, until_named=True)) == end


# --- the Responses API's typed events ---------------------------------------------------------


def typed(kind: str, **fields: Any) -> bytes:
    return b"event: " + kind.encode() + b"\n" + data({"type": kind, **fields}) + b"\n\n"


RESPONSE = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}
COMPLETED = {**RESPONSE, "status": "completed", "usage": {"input_tokens": 2, "output_tokens": 1}}


def test_a_typed_stream_whose_fingerprint_changes_midway_is_not_complete() -> None:
    """As for chat chunks: stored, it would be served as the first fingerprint's answer."""
    created = typed("response.created", response={**RESPONSE, "system_fingerprint": "fp_a"})
    delta = typed("response.output_text.delta", delta="x", system_fingerprint="fp_b")
    done = typed("response.completed", response={**COMPLETED, "system_fingerprint": "fp_b"})
    assert recorded(created + done, typed=True).fingerprint == "fp_a"
    assert not recorded(created + done, typed=True).complete
    assert not recorded(
        created + delta + typed("response.completed", response=COMPLETED), typed=True
    ).complete
    same = typed("response.completed", response={**COMPLETED, "system_fingerprint": "fp_a"})
    assert recorded(created + same, typed=True).complete


def test_done_before_a_typed_stream_completed_is_not_complete() -> None:
    """The SDK stops at `[DONE]`, whatever the route: `response.completed` after it is lost."""
    created = typed("response.created", response=RESPONSE)
    done = typed("response.completed", response=COMPLETED)
    assert not recorded(created + b"data: [DONE]\n\n" + done, typed=True).complete
    assert recorded(created + done + b"data: [DONE]\n\n", typed=True).complete


@pytest.mark.parametrize(
    "completed",
    [
        {**COMPLETED, "error": {"code": "server_error", "message": "overloaded"}},
        {key: value for key, value in COMPLETED.items() if key != "status"},
        {**COMPLETED, "output": None},
    ],
    ids=["an error beside completed", "no status", "no output"],
)
def test_a_completed_event_its_whole_form_would_not_store_leaves_the_stream_incomplete(
    completed: dict[str, Any],
) -> None:
    """A stored stream answers as the whole response would, so by the same rule: a completed
    status that names an error too, or a response that says no status, is not an answer."""
    created = typed("response.created", response=RESPONSE)
    assert not recorded(
        created + typed("response.completed", response=completed), typed=True
    ).complete
    assert recorded(created + typed("response.completed", response=COMPLETED), typed=True).complete


def test_a_typed_stream_ended_by_cr_alone_is_complete_and_found_again() -> None:
    created = typed("response.created", response=RESPONSE)
    done = typed("response.completed", response=COMPLETED)
    stream = (created + done).replace(b"\n", b"\r")
    assert recorded(stream, list(range(len(stream))), typed=True).complete
    assert orjson.loads(responses.final_response(stream) or b"null") == COMPLETED


def test_a_choice_that_never_finished_leaves_the_stream_unfinished() -> None:
    """Two choices, a finish_reason for the first only, then `[DONE]`: the second was cut
    short, as a stream with no finish_reason at all is, and such a stream is not stored.
    A chunk for a choice already finished (a content filter's note, say) changes nothing."""
    both = {"choices": [{"index": 0, "delta": {"content": "a"}}, {"index": 1, "delta": {}}]}
    first = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    second = {"choices": [{"index": 1, "delta": {}, "finish_reason": "length"}]}
    note = {"choices": [{"index": 0, "delta": {}, "finish_reason": None, "content_filter": {}}]}

    def stream(*events: Any) -> bytes:
        return joined([line for e in events for line in (data(e), b"")] + [b"data: [DONE]", b""])

    assert not recorded(stream(both, first)).complete
    assert recorded(stream(both, first, second)).complete
    assert recorded(stream(both, second, first, note)).complete


def test_a_stream_naming_more_choices_than_any_request_asks_for_is_refused() -> None:
    """Each choice is tracked until it finishes: one chunk per new index would otherwise grow
    the recorder's state with the stream."""
    events = [{"choices": [{"index": n, "delta": {}, "finish_reason": "stop"}]} for n in range(129)]
    lines = [line for e in events for line in (data(e), b"")] + [b"data: [DONE]", b""]
    assert not recorded(joined(lines)).complete
    assert recorded(joined(lines[2:])).complete


def test_a_frame_of_many_short_lines_costs_a_few_times_its_size_to_read() -> None:
    """A frame of `data: x` lines up to the cap, in pieces as from the network: its lines were
    split into an object each, and their values into another, about nineteen times the
    frame's size at once (over 600 MiB for the default --max-entry)."""
    cap = 2 << 20
    stream = b"data: x\n" * (cap // 8 - 1) + b"\n"
    pieces = [stream[at : at + 65536] for at in range(0, len(stream), 65536)]
    recorder = StreamRecorder(cap)
    tracemalloc.start()
    try:
        for piece in pieces:
            recorder.feed(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert recorder.frames == 1 and recorder.failed  # `x` lines are no JSON
    assert peak < 6 * cap, f"{peak / cap:.1f} times the frame's size"


def test_the_text_of_a_stream_is_read_with_the_recorders_rules() -> None:
    """Drift checks and rotation reports compare a stream's text: an event whose data spans
    lines (which they read as nothing) is read as the recorder and the SDK read it."""
    split = b'data: {"choices": [{"index": 0,\ndata: "delta": {"content": "Hel"}}]}\n\n'
    stream = split + joined(CLEAN[:2]).replace(b"\n", b"\r")
    assert answer_text(stream, stream=True) == "HelHi é✓"
    assert text_of(stream, stream=True) == "HelHi é✓"


@pytest.mark.parametrize("ends", [False, True], ids=["one-frame-never-ended", "tiny-frames"])
def test_a_stream_arriving_a_few_bytes_at_a_time_holds_about_what_it_holds(ends: bool) -> None:
    """Each piece the upstream's pace delivers was kept as its own object, in the recording
    and in the frame not yet ended: three bytes at a time, a stream held about fifteen times
    its size (and the cap bounds only the bytes). The ratio does not depend on the size (the
    same at 60 kB as at 600 kB, before the fix and after), so a small stream shows it."""
    cap, size = 1 << 20, 60_000
    stream = (b"data: {}\n\n" if ends else b"x") * (size // (10 if ends else 1))
    recorder = StreamRecorder(cap)
    tracemalloc.start()
    try:
        for at in range(0, len(stream), 3):
            recorder.feed(stream[at : at + 3])  # a new object each time, as from the network
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert recorder.body() == stream
    assert held < 3 * size, f"{held / size:.1f} times the bytes held"
