"""Unit tests of proxy.core.entry (what an answer says of itself) and proxy.core.sse (recording a
stream on the side). How entries are packed: tests/unit/test_codec.py."""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.entry import fingerprint_of, usage_of
from proxy.core.sse import StreamRecorder

# --------------------------------------------------------------------------------------------
# usage_of / fingerprint_of


class TestUsageOf:
    def test_usage(self) -> None:
        answer = {"usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}
        assert usage_of(answer) == (9, 3)

    @pytest.mark.parametrize(
        "answer",
        [
            {},
            {"usage": None},
            {"usage": "lots"},
            {"usage": [1, 2]},
            {"usage": {}},
            {"usage": {"prompt_tokens": None, "completion_tokens": None}},
            {"usage": {"prompt_tokens": "9", "completion_tokens": "3"}},
            {"usage": {"prompt_tokens": -9, "completion_tokens": 2**64}},  # no counter adds them
        ],
    )
    def test_no_usage_is_zero(self, answer: dict[str, Any]) -> None:
        assert usage_of(answer) == (0, 0)

    def test_embeddings_usage_has_no_completion(self) -> None:
        assert usage_of({"usage": {"prompt_tokens": 8, "total_tokens": 8}}) == (8, 0)

    def test_partial(self) -> None:
        assert usage_of({"usage": {"completion_tokens": 4}}) == (0, 4)


class TestFingerprintOf:
    def test_fingerprint(self) -> None:
        assert fingerprint_of({"system_fingerprint": "fp_44709d6fcb"}) == "fp_44709d6fcb"

    @pytest.mark.parametrize(
        "answer",
        [
            {},
            {"system_fingerprint": None},
            {"system_fingerprint": ""},
            {"system_fingerprint": 5},
            {"system_fingerprint": ["fp_x"]},
        ],
    )
    def test_none(self, answer: dict[str, Any]) -> None:
        assert fingerprint_of(answer) == "none"


# --------------------------------------------------------------------------------------------
# StreamRecorder


def _chunk(
    choices: list[dict[str, Any]], usage: dict[str, int] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": choices,
        "usage": usage,
        **extra,
    }


def _delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


ROLE = _chunk([_delta({"role": "assistant", "content": "", "refusal": None})])
CONTENT = [_chunk([_delta({"content": piece})]) for piece in ("Hel", "lo, w", "örld ✓ 😀", "!")]
FINISH = _chunk([_delta({}, "stop")])
USAGE = _chunk([], {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14})
EVENTS = [ROLE, *CONTENT, FINISH, USAGE]


def sse(events: list[dict[str, Any]], done: bool = True, sep: bytes = b"\n\n") -> bytes:
    out = b"".join(b"data: " + orjson.dumps(event) + sep for event in events)
    return out + (b"data: [DONE]" + sep if done else b"")


STREAM = sse(EVENTS)
STREAM_CRLF = sse(EVENTS, sep=b"\r\n\r\n")


def record(
    data: bytes, pieces: list[int] | None = None, max_bytes: int = 1 << 20
) -> StreamRecorder:
    """Feed `data`, cut at the given offsets."""
    recorder = StreamRecorder(max_bytes)
    cuts = sorted(set(pieces or []))
    start = 0
    for cut in [*cuts, len(data)]:
        recorder.feed(data[start:cut])
        start = cut
    return recorder


def assert_clean(recorder: StreamRecorder, data: bytes, frames: int = len(EVENTS) + 1) -> None:
    assert recorder.complete
    assert recorder.fingerprint == "fp_44709d6fcb"
    assert (recorder.prompt_tokens, recorder.completion_tokens) == (9, 5)
    assert recorder.frames == frames
    assert recorder.body() == data


class TestStreamRecorder:
    def test_whole_stream(self) -> None:
        assert_clean(record(STREAM), STREAM)

    def test_byte_by_byte(self) -> None:
        assert_clean(record(STREAM, list(range(len(STREAM)))), STREAM)

    def test_crlf_framing(self) -> None:
        assert_clean(record(STREAM_CRLF), STREAM_CRLF)

    def test_crlf_byte_by_byte(self) -> None:
        assert_clean(record(STREAM_CRLF, list(range(len(STREAM_CRLF)))), STREAM_CRLF)

    def test_crlf_split_inside_separator(self) -> None:
        first = STREAM_CRLF.index(b"\r\n\r\n")
        for offset in range(1, 4):
            assert_clean(record(STREAM_CRLF, [first + offset]), STREAM_CRLF)

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
    def test_any_split(self, cuts: list[int]) -> None:
        assert_clean(record(STREAM, cuts), STREAM)

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=len(STREAM_CRLF)), max_size=40))
    def test_any_split_crlf(self, cuts: list[int]) -> None:
        assert_clean(record(STREAM_CRLF, cuts), STREAM_CRLF)

    def test_empty_feeds_are_harmless(self) -> None:
        recorder = StreamRecorder(1 << 20)
        recorder.feed(b"")
        for byte in range(len(STREAM)):
            recorder.feed(STREAM[byte : byte + 1])
            recorder.feed(b"")
        assert_clean(recorder, STREAM)

    def test_data_without_space(self) -> None:
        data = STREAM.replace(b"data: ", b"data:")
        assert_clean(record(data), data)

    def test_comments_and_other_fields_ignored(self) -> None:
        data = b": keep-alive\n\n" + STREAM.replace(b"data: [DONE]", b"id: 9\ndata: [DONE]")
        assert_clean(record(data), data)

    def test_without_usage_chunk(self) -> None:
        data = sse([ROLE, *CONTENT, FINISH])
        recorder = record(data)
        assert recorder.complete
        assert (recorder.prompt_tokens, recorder.completion_tokens) == (0, 0)
        assert recorder.frames == len(CONTENT) + 3

    def test_null_fingerprint(self) -> None:
        events = [{**event, "system_fingerprint": None} for event in EVENTS]
        recorder = record(sse(events))
        assert recorder.complete
        assert (recorder.fingerprint, recorder.taught) == (None, "none")

    def test_missing_fingerprint(self) -> None:
        events = [{k: v for k, v in event.items() if k != "system_fingerprint"} for event in EVENTS]
        recorder = record(sse(events))
        assert recorder.complete
        assert (recorder.fingerprint, recorder.taught) == (None, "none")

    def test_a_fingerprint_changing_mid_stream_is_not_complete(self) -> None:
        events = [*EVENTS[:2], *({**e, "system_fingerprint": "fp_other"} for e in EVENTS[2:])]
        recorder = record(sse(events))
        assert recorder.fingerprint == "fp_44709d6fcb"
        assert not recorder.complete

    def test_a_chunk_naming_no_fingerprint_contradicts_none(self) -> None:
        events = [EVENTS[0], *({**e, "system_fingerprint": None} for e in EVENTS[1:])]
        assert_clean(record(sse(events)), sse(events))

    def test_missing_done_not_complete(self) -> None:
        data = sse(EVENTS, done=False)
        recorder = record(data)
        assert not recorder.complete
        assert recorder.body() == data

    def test_done_without_blank_line_not_complete(self) -> None:
        recorder = record(STREAM[:-2])  # "data: [DONE]" never terminated: the stream was cut
        assert not recorder.complete

    def test_cut_mid_stream_not_complete(self) -> None:
        recorder = record(STREAM[: len(STREAM) // 2])
        assert not recorder.complete

    def test_done_without_finish_reason_not_complete(self) -> None:
        recorder = record(sse([ROLE, *CONTENT, USAGE]))
        assert not recorder.complete

    def test_error_event_not_complete(self) -> None:
        error = {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
        recorder = record(sse([ROLE, CONTENT[0], error, FINISH, USAGE]))
        assert not recorder.complete

    def test_error_event_alone_not_complete(self) -> None:
        recorder = record(b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n')
        assert not recorder.complete

    @pytest.mark.parametrize(
        "named",
        [
            b"event: error\n",  # above a token: EventSource's error listener gets it
            b"event: message\nevent: error\n",  # which one wins depends on the reader
            b"event: message \n",  # a name with a trailing space is another name
            b"event: thread.message.delta\n",
        ],
    )
    def test_a_frame_named_otherwise_than_message_is_not_complete(self, named: bytes) -> None:
        data = sse([ROLE, *CONTENT, FINISH]).replace(b"data: ", named + b"data: ", 2)
        assert not record(data).complete

    def test_a_named_event_without_data_is_not_complete(self) -> None:
        assert not record(b"event: error\n\n" + STREAM).complete

    def test_frames_named_message_are_plain_frames(self) -> None:
        data = STREAM.replace(b"data: ", b"event: message\ndata: ")
        assert_clean(record(data), data)

    def test_garbage_event_not_complete(self) -> None:
        recorder = record(
            sse([ROLE, FINISH]).replace(b"data: [DONE]", b"data: {oops\n\ndata: [DONE]")
        )
        assert not recorder.complete

    def test_non_object_event_not_complete(self) -> None:
        recorder = record(b"data: [1, 2]\n\n" + STREAM)
        assert not recorder.complete

    def test_over_max_bytes(self) -> None:
        recorder = record(STREAM, [10, 200], max_bytes=len(STREAM) - 1)
        assert not recorder.complete
        assert recorder.body() == b""

    def test_over_max_bytes_single_feed(self) -> None:
        recorder = record(STREAM, max_bytes=100)
        assert not recorder.complete
        assert recorder.body() == b""

    def test_exactly_max_bytes_is_fine(self) -> None:
        assert_clean(record(STREAM, [50], max_bytes=len(STREAM)), STREAM)

    def test_stays_oversize(self) -> None:
        recorder = StreamRecorder(10)
        recorder.feed(b"x" * 11)
        recorder.feed(STREAM)
        assert not recorder.complete
        assert recorder.body() == b""

    def test_finish_reason_length_counts(self) -> None:
        recorder = record(sse([ROLE, CONTENT[0], _chunk([_delta({}, "length")]), USAGE]))
        assert recorder.complete

    def test_multiple_choices(self) -> None:
        two = _chunk([_delta({"content": "a"}), {**_delta({"content": "b"}), "index": 1}])
        end = _chunk([_delta({}, "stop"), {**_delta({}, "stop"), "index": 1}])
        recorder = record(sse([ROLE, two, end, USAGE]))
        assert recorder.complete
        assert recorder.frames == 5


def test_a_frame_that_never_ends_holds_at_most_the_cap_and_one_chunk() -> None:
    """One `data:` line three times the cap, in pieces: the recording and the frame not yet
    ended are the same chunks, never a copy (a copy held the frame twice, and up to 1 MiB
    of it whatever the cap)."""
    cap, piece = 256 * 1024, 16 * 1024
    recorder = StreamRecorder(cap)
    tracemalloc.start()
    try:
        recorder.feed(b"data: ")
        for _ in range(3 * cap // piece):
            recorder.feed(b"x" * piece)  # a new object each time, as from the network
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert recorder.oversize and not recorder.reading
    assert peak < cap + 2 * piece, f"{peak} bytes held at the peak"


def test_a_frame_nearly_as_long_as_the_cap_in_small_pieces_is_read_and_kept() -> None:
    cap = 64 * 1024
    long = _chunk([_delta({"content": "y" * (cap - 2048)})])
    stream = sse([ROLE, long, FINISH, USAGE])
    assert cap // 2 < len(stream) <= cap
    recorder = StreamRecorder(cap)
    for at in range(0, len(stream), 100):
        recorder.feed(stream[at : at + 100])
    assert recorder.complete and recorder.body() == stream
