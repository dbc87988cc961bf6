"""Unit tests of where StreamRecorder stops taking bytes: after the frame that ends a stream
cleanly (nothing past it is read, recorded or passed on by the relay), and, asked, after the
frame that names the answer (where the relay sends its head). Fed as the relay feeds it
(proxy.server.streaming `_chunks`): each read offered again from where the last call stopped."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.routes import RESPONSES
from proxy.core.sse import StreamRecorder


def chunk(content: str, finish: str | None = None, index: int = 0) -> bytes:
    event = {
        "object": "chat.completion.chunk",
        "system_fingerprint": "fp_end",
        "choices": [{"index": index, "delta": {"content": content}, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


def typed(kind: str, **fields: object) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps({"type": kind, **fields}))


ANSWER = b": hi\n\n" + chunk("hel") + chunk("lo", "stop") + b"data: [DONE]\n\n"
CRLF = ANSWER.replace(b"\n\n", b"\r\n\r\n")
CR = ANSWER.replace(b"\n\n", b"\r\r")
RESPONSE = {"object": "response", "status": "completed", "output": [{"type": "message"}]}
TYPED = typed("response.created", response={**RESPONSE, "status": "in_progress"}) + typed(
    "response.completed", response=RESPONSE
)
AFTER = [
    b'data: {"extra": 1}\n\n',
    chunk(" and more"),
    chunk("more", index=1),
    b'event: error\ndata: {"error": {}}\n\n',
    b"data: [DONE]\n\n",
    b"\n",
    b"\r\n",
    b"data: cut sh",
]


def fed(
    recorder: StreamRecorder, reads: list[bytes], until_named: bool = False
) -> tuple[bytes, list[bytes]]:
    """Feed `reads` as the relay does; what was taken, and the first call's bytes each time the
    head was awaited (the frames up to the one that named the answer, read by read)."""
    taken: list[bytes] = []
    head: list[bytes] = []
    for read in reads:
        while read and not recorder.at_end:
            awaiting = until_named and not recorder.named
            piece = recorder.feed(read, until_named=awaiting)
            if not piece:  # only past the end, when the LF its CR might have had did not come
                assert recorder.at_end
                break
            (head if awaiting else taken).append(piece)
            read = read[len(piece) :]
    return b"".join([*head, *taken]), head


def cuts(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """`data` cut into reads at any places."""
    return st.lists(st.integers(0, len(data)), max_size=8).map(
        lambda at: [
            data[a:b] for a, b in zip([0, *sorted(at)], [*sorted(at), len(data)], strict=True)
        ]
    )


@pytest.mark.parametrize("answer", [ANSWER, CRLF, CR], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("after", AFTER)
def test_nothing_past_a_clean_end_is_taken(answer: bytes, after: bytes) -> None:
    # An LF right after the CR that ended the stream makes it a CRLF, as any reader parses it.
    end = answer + b"\n" if answer.endswith(b"\r") and after.startswith(b"\n") else answer
    recorder = StreamRecorder(1 << 20)
    assert recorder.feed(answer + after) == end
    assert recorder.complete and recorder.at_end
    assert recorder.body() == end
    assert recorder.feed(after) == b""
    assert recorder.body() == end


@pytest.mark.parametrize("after", [typed("error", message="late"), typed("response.failed")])
def test_nothing_past_response_completed_is_taken(after: bytes) -> None:
    recorder = StreamRecorder(1 << 20, RESPONSES)
    assert recorder.feed(TYPED + after) == TYPED
    assert recorder.complete and recorder.body() == TYPED


@given(st.sampled_from([ANSWER, CRLF, CR]).flatmap(lambda a: cuts(a + AFTER[1] + AFTER[0])))
def test_however_the_reads_are_cut_the_answer_is_taken_to_its_end(reads: list[bytes]) -> None:
    recorder = StreamRecorder(1 << 20)
    taken, _ = fed(recorder, reads, until_named=True)
    whole = b"".join(reads)
    answer = next(a for a in (ANSWER, CRLF, CR) if whole.startswith(a))
    assert taken == recorder.body() == answer
    assert recorder.complete and recorder.at_end


@pytest.mark.parametrize("answer", [CRLF, CR + b"\n"], ids=["crlf", "cr-cr-lf"])
def test_the_lf_of_the_crlf_ending_the_stream_is_taken_when_it_comes_apart(
    answer: bytes,
) -> None:
    recorder = StreamRecorder(1 << 20)
    taken, _ = fed(recorder, [answer[:-1], b"\n" + chunk("x")])
    assert taken == recorder.body() == answer


def test_a_cr_ending_the_stream_takes_no_more_than_an_lf() -> None:
    recorder = StreamRecorder(1 << 20)
    taken, _ = fed(recorder, [CR, b"\r\n" + chunk("x")])
    assert taken == recorder.body() == CR


@pytest.mark.parametrize(
    "stream",
    [
        chunk("hel") + b'data: {"error": {}}\n\ndata: [DONE]\n\n' + chunk("x"),
        chunk("hel") + b"data: [DONE]\n\n" + chunk("lo", "stop"),
    ],
    ids=["an-error", "done-before-the-finish"],
)
def test_a_stream_that_never_ended_cleanly_is_taken_whole(stream: bytes) -> None:
    """No end to stop at: the client sees all the upstream sent, as from the upstream itself."""
    recorder = StreamRecorder(1 << 20)
    assert recorder.feed(stream) == stream
    assert not recorder.complete and not recorder.at_end


@given(st.lists(st.sampled_from([b"data: {}\n\n", b"data: x\r\n\r\n", b"\n", b"da", b"ta"])))
def test_stopping_where_the_answer_is_named_reads_the_same_frames(parts: list[bytes]) -> None:
    """The head's cut changes where the recorder's input is split, never what it reads."""
    whole, cut = StreamRecorder(1 << 20), StreamRecorder(1 << 20)
    data = b"".join(parts)
    whole.feed(data)
    taken, _ = fed(cut, [data], until_named=True)
    assert taken == data
    assert (cut.frames, cut.failed, cut.body()) == (whole.frames, whole.failed, whole.body())


def test_the_head_ends_with_the_frame_that_named_the_answer() -> None:
    role = b'data: {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}\n\n'
    first = chunk("hel")
    recorder = StreamRecorder(1 << 20)
    _, head = fed(recorder, [b": ping\n\n" + role + first + chunk("lo", "stop")], True)
    assert head == [b": ping\n\n" + role + first]


FRAMES = [b": hi", chunk("hel")[:-2], chunk("lo", "stop")[:-2], b"data: [DONE]"]
BLANK_LINES = [b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n", b"\r\n\n", b"\n\r"]


@given(
    st.lists(st.sampled_from(BLANK_LINES), min_size=4, max_size=4),
    st.sampled_from([b"", *AFTER]),
)
def test_a_stream_of_mixed_line_ends_is_taken_to_its_end(ends: list[bytes], after: bytes) -> None:
    answer = b"".join(frame + end for frame, end in zip(FRAMES, ends, strict=True))
    if answer.endswith(b"\r") and after.startswith(b"\n"):
        after = after[1:]  # an LF there would be the answer's own
    recorder = StreamRecorder(1 << 20)
    assert recorder.feed(answer + after) == recorder.body() == answer
    assert recorder.complete
