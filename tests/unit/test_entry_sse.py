"""Unit tests of proxy.entry (the stored answer) and proxy.sse (recording a stream on the side)."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.entry import CorruptEntry, Entry, fingerprint_of, usage_of
from proxy.core.sse import StreamRecorder
from proxy.server.streaming import _frame_end

# --------------------------------------------------------------------------------------------
# Entry.pack / Entry.unpack

ENTRY = Entry(
    body=b'{"id":"chatcmpl-1","choices":[]}',
    content_type="application/json",
    fingerprint="fp_abc",
    stored_at=1_700_000_000.25,
    model="gpt-4o-mini",
    seed=12345,
    seed_source="default",
    prompt_tokens=9,
    completion_tokens=3,
    stream=False,
)

entries = st.builds(
    Entry,
    body=st.binary(max_size=2048),
    content_type=st.sampled_from(["application/json", "text/event-stream; charset=utf-8"])
    | st.text(max_size=30),
    fingerprint=st.text(max_size=20),
    stored_at=st.floats(allow_nan=False, allow_infinity=False),
    model=st.text(max_size=30),
    seed=st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
    seed_source=st.sampled_from([None, "client", "default"]),
    prompt_tokens=st.integers(min_value=0, max_value=2**40),
    completion_tokens=st.integers(min_value=0, max_value=2**40),
    stream=st.booleans(),
)


class TestEntry:
    def test_round_trip(self) -> None:
        assert Entry.unpack(ENTRY.pack()) == ENTRY

    def test_defaults_round_trip(self) -> None:
        entry = Entry(
            body=b"", content_type="application/json", fingerprint="none", stored_at=0.0, model=""
        )
        assert Entry.unpack(entry.pack()) == entry

    def test_body_is_kept_verbatim_at_the_end(self) -> None:
        body = b"data: {}\n\n\x00\xff data: [DONE]\n\n"
        packed = replace(ENTRY, body=body, stream=True).pack()
        assert packed.endswith(body)
        assert Entry.unpack(packed).body == body

    @settings(max_examples=100, deadline=None)
    @given(entries)
    def test_round_trip_any(self, entry: Entry) -> None:
        back = Entry.unpack(entry.pack())
        assert back == entry
        assert back.body == entry.body
        assert type(back.body) is bytes

    @settings(max_examples=100, deadline=None)
    @given(st.binary(max_size=4096))
    def test_round_trip_any_body(self, body: bytes) -> None:
        entry = replace(ENTRY, body=body)
        assert Entry.unpack(entry.pack()).body == body

    @pytest.mark.parametrize(
        "blob",
        [
            pytest.param(b"", id="empty"),
            pytest.param(b"\x00", id="short-prefix"),
            pytest.param(b"\x00\x00\x00", id="three-bytes"),
            pytest.param(b"\x00\x00\x00\x00", id="empty-header"),
            pytest.param(b"\x00\x00\x00\x00body", id="empty-header-with-body"),
            pytest.param(b"\x00\x00\x00\x05hello", id="header-not-json"),
            pytest.param(b"\xff\xff\xff\xff{}", id="length-beyond-blob"),
            pytest.param(b'{"body": "x"}', id="no-prefix"),
            pytest.param(b"plain text answer", id="text"),
            pytest.param(b"\x00\x00\x00\x02[]", id="header-is-array"),
            pytest.param(b"\x00\x00\x00\x04null", id="header-is-null"),
            pytest.param(b'\x00\x00\x00\x03"x"', id="header-is-string"),
            pytest.param(b"\x00\x00\x00\x02{}", id="header-missing-fields"),
        ],
    )
    def test_corrupt_blobs(self, blob: bytes) -> None:
        with pytest.raises(CorruptEntry):
            Entry.unpack(blob)

    def test_header_with_unknown_field(self) -> None:
        meta = orjson.loads(ENTRY.pack()[4 : 4 + int.from_bytes(ENTRY.pack()[:4], "big")])
        header = orjson.dumps({**meta, "surprise": 1})
        with pytest.raises(CorruptEntry):
            Entry.unpack(len(header).to_bytes(4, "big") + header + b"body")

    def test_header_with_body_field(self) -> None:
        meta = orjson.loads(ENTRY.pack()[4 : 4 + int.from_bytes(ENTRY.pack()[:4], "big")])
        header = orjson.dumps({**meta, "body": "x"})
        with pytest.raises(CorruptEntry):
            Entry.unpack(len(header).to_bytes(4, "big") + header + b"body")

    def test_truncated_header(self) -> None:
        packed = ENTRY.pack()
        size = int.from_bytes(packed[:4], "big")
        for cut in (5, 4 + size // 2, 4 + size - 1):
            with pytest.raises(CorruptEntry):
                Entry.unpack(packed[:cut])

    def test_corrupt_entry_is_a_value_error(self) -> None:
        assert issubclass(CorruptEntry, ValueError)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=64))
    def test_random_bytes_never_raise_anything_else(self, blob: bytes) -> None:
        with contextlib.suppress(CorruptEntry):
            Entry.unpack(blob)

    @settings(max_examples=100, deadline=None)
    @given(st.binary(min_size=4, max_size=4), st.binary(max_size=64))
    def test_random_prefix_on_real_header(self, prefix: bytes, tail: bytes) -> None:
        packed = ENTRY.pack()
        with contextlib.suppress(CorruptEntry):
            Entry.unpack(prefix + packed[4:] + tail)


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
        assert recorder.fingerprint == "none"

    def test_missing_fingerprint(self) -> None:
        events = [{k: v for k, v in event.items() if k != "system_fingerprint"} for event in EVENTS]
        recorder = record(sse(events))
        assert recorder.complete
        assert recorder.fingerprint in (None, "none")

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


# --------------------------------------------------------------------------------------------
# Cutting the first chunk of a stream after its first frame (proxy.streaming)


@pytest.mark.parametrize(
    ("chunk", "end"),
    [
        (b"data: 1\n\ndata: 2\n\n", 9),
        (b"data: 1\r\n\r\ndata: 2\r\n\r\n", 11),
        (b"data: 1\n\r\ndata: 2\n\n", 10),
        (b": ping\n\ndata: 1\n\n", 8),
        (b"data: 1\ndata: 2", 15),  # no frame end yet: the whole chunk
        (b"", 0),
    ],
)
def test_frame_end_is_just_past_the_first_blank_line(chunk: bytes, end: int) -> None:
    assert _frame_end(chunk) == end


@given(st.lists(st.sampled_from([b"data: {}\n\n", b"data: x\r\n\r\n", b"\n", b"da", b"ta"])))
def test_cutting_at_frame_ends_reads_the_same_frames(parts: list[bytes]) -> None:
    """The relay's cut changes where the recorder's input is split, never what it reads."""
    whole, cut = StreamRecorder(1 << 20), StreamRecorder(1 << 20)
    data = b"".join(parts)
    whole.feed(data)
    for _ in range(len(data) + 1):
        if not data:
            break
        end = _frame_end(data)
        cut.feed(data[:end])
        data = data[end:]
    assert (cut.frames, cut.failed, cut.body()) == (whole.frames, whole.failed, whole.body())
