"""A streamed transcript, speech sent as events and a streamed image are typed streams that
end with one event (`transcript.text.done`, `speech.audio.done`, `image_generation.completed`,
`image_edit.completed`): the recorder knows an answer from its end, and everything else (an
error event, an end without what it must hold, `[DONE]` before the end, an event named
otherwise than its type, a type that is no string) is no answer."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core import answers, routes
from proxy.core.routes import (
    CHAT,
    IMAGE_EDITS,
    IMAGES,
    RESPONSES,
    SPEECH,
    TRANSCRIPTIONS,
    TRANSLATIONS,
)
from proxy.core.sse import StreamRecorder
from proxy.server.keycheck import answers as key_check_answers
from proxy.server.verify import answers_drift, fresh_fingerprint, transcript_text


def event(kind: str, named: bool = False, **fields: Any) -> bytes:
    head = b"event: " + kind.encode() + b"\n" if named else b""
    return head + b"data: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"


USAGE = {"type": "tokens", "input_tokens": 12, "output_tokens": 3, "total_tokens": 15}
HEARD = (
    event("transcript.text.delta", delta="Hello ")
    + event("transcript.text.delta", delta="there.")
    + event("transcript.text.done", text="Hello there.", usage=USAGE)
)
SPOKEN = event("speech.audio.delta", audio="SUQzBA==") + event(
    "speech.audio.done", usage={"input_tokens": 2, "output_tokens": 40, "total_tokens": 42}
)


def recorded(stream: bytes, kind: str) -> StreamRecorder:
    recorder = StreamRecorder(1 << 20, kind)
    recorder.feed(stream)
    return recorder


@pytest.mark.parametrize("kind", [TRANSCRIPTIONS, TRANSLATIONS])
def test_a_transcript_ends_with_its_text_and_teaches_no_fingerprint(kind: str) -> None:
    recorder = recorded(HEARD, kind)
    assert recorder.complete and recorder.taught == "none"
    assert (recorder.prompt_tokens, recorder.completion_tokens) == (12, 3)
    assert recorder.body() == HEARD


def test_speech_as_events_ends_with_its_done_event() -> None:
    recorder = recorded(SPOKEN, SPEECH)
    assert recorder.complete and (recorder.prompt_tokens, recorder.completion_tokens) == (2, 40)


def test_events_named_by_their_own_type_read_as_unnamed_ones() -> None:
    named = b"".join(
        event(kind, named=True, **fields)
        for kind, fields in [
            ("transcript.text.delta", {"delta": "Hi."}),
            ("transcript.text.done", {"text": "Hi."}),
        ]
    )
    assert recorded(named, TRANSCRIPTIONS).complete


def test_nothing_after_the_end_is_taken_so_the_relay_passes_what_a_hit_replays() -> None:
    after = b"data: [DONE]\n\n" + event("transcript.text.delta", delta="more")
    recorder = StreamRecorder(1 << 20, TRANSCRIPTIONS)
    assert recorder.feed(HEARD + after) == HEARD
    assert recorder.complete and recorder.at_end


@pytest.mark.parametrize(
    ("stream", "kind"),
    [
        (HEARD.rsplit(b"data:", 1)[0], TRANSCRIPTIONS),  # cut before its end
        (
            event("transcript.text.delta", delta="Hi") + event("transcript.text.done"),
            TRANSCRIPTIONS,
        ),
        (event("transcript.text.done", text=None), TRANSCRIPTIONS),
        (event("transcript.text.delta", delta="Hi") + b"data: [DONE]\n\n", TRANSCRIPTIONS),
        (event("error", error={"message": "overloaded"}) + HEARD, TRANSCRIPTIONS),
        (b'data: {"error": {"message": "no"}}\n\n' + HEARD, TRANSCRIPTIONS),
        (
            b"event: transcript.text.delta\n" + event("transcript.text.done", text="x"),
            TRANSCRIPTIONS,
        ),
        (b'data: {"type": ["transcript.text.done"], "text": "x"}\n\n' + HEARD, TRANSCRIPTIONS),
        (event("speech.audio.delta", audio="SUQz"), SPEECH),
        (event("error", error={"message": "no"}) + SPOKEN, SPEECH),
        (HEARD, SPEECH),  # a transcript's end ends no speech
        (b'data: {"type": {}}\n\n', RESPONSES),
    ],
    ids=[
        "cut",
        "done-without-text",
        "done-text-null",
        "done-marker-first",
        "error-event",
        "error-object",
        "misnamed",
        "type-a-list",
        "speech-cut",
        "speech-error",
        "another-routes-end",
        "responses-type-an-object",
    ],
)
def test_what_is_no_answer_is_never_complete(stream: bytes, kind: str) -> None:
    recorder = recorded(stream, kind)
    assert not recorder.complete and recorder.taught is None


def test_a_stream_of_several_images_is_read_as_chunks_and_never_ends_early() -> None:
    """One image's stream ends at its `completed` event; one of several images ends once per
    image: read as chat chunks, which they are not, its recording is spoilt at once and all
    of it relayed. Read as one image's, the relay would end it at the first."""
    images = event("image_edit.completed", named=True, b64_json="aW1n") * 2
    for kind in (IMAGES, IMAGE_EDITS):
        assert routes.events_of(kind, {"n": 2}) == CHAT
        assert routes.events_of(kind, {}) == routes.events_of(kind, {"n": 1}) == kind
    recorder = StreamRecorder(1 << 20, routes.events_of(IMAGE_EDITS, {"n": 2}))
    assert recorder.feed(images) == images and recorder.failed
    one = StreamRecorder(1 << 20, IMAGE_EDITS)
    assert one.feed(images) == images[: len(images) // 2] and one.complete
    assert recorded(HEARD, CHAT).failed


def test_an_image_streams_end_holds_its_image() -> None:
    partial = event("image_generation.partial_image", b64_json="cGFy", partial_image_index=0)
    done = event("image_generation.completed", b64_json="aW1n", usage=USAGE)
    assert recorded(partial + done, IMAGES).complete
    assert not recorded(partial + event("image_generation.completed"), IMAGES).complete
    assert not recorded(partial, IMAGES).complete
    assert not recorded(partial + event("image_edit.completed", b64_json="aW1n"), IMAGES).complete
    said = answers.text(partial + done, True)
    assert said.startswith("images sha256:") and said.endswith("(3 bytes)")
    assert answers.text(partial.replace(b"cGFy", b"b3Ro") + done, True) == said


def test_the_key_check_and_the_sampler_read_a_streamed_transcript() -> None:
    assert key_check_answers(HEARD, "text/event-stream", True, TRANSCRIPTIONS, "transcript")
    cut = HEARD.rsplit(b"data:", 1)[0]
    assert not key_check_answers(cut, "text/event-stream", True, TRANSCRIPTIONS, "transcript")
    assert key_check_answers(SPOKEN, "text/event-stream", True, SPEECH, "audio")
    assert fresh_fingerprint(HEARD, True, TRANSCRIPTIONS, "transcript") == "none"
    assert fresh_fingerprint(cut, True, TRANSCRIPTIONS, "transcript") is None
    assert transcript_text(HEARD, stream=True) == "Hello there."
    other = HEARD.replace(b"there.", b"then.")
    assert answers_drift(HEARD, HEARD, True, "transcript") == 0.0
    assert 0 < answers_drift(HEARD, other, True, "transcript") < 0.5


def test_a_diff_reads_a_streamed_transcripts_words_and_speechs_sound() -> None:
    assert answers.text(HEARD, True) == "Hello there."
    sound = answers.text(SPOKEN, True)
    assert sound.startswith("sound sha256:") and sound.endswith("(4 bytes)")
    louder = SPOKEN.replace(b"SUQzBA==", b"SUQzBQ==")
    assert answers.text(louder, True) != sound


TYPES = st.sampled_from(
    [
        "transcript.text.delta",
        "transcript.text.done",
        "speech.audio.delta",
        "speech.audio.done",
        "image_generation.partial_image",
        "image_generation.completed",
        "image_edit.completed",
        "response.created",
        "response.completed",
        "error",
    ]
)
ODD = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.lists(st.text(max_size=3), max_size=2),
    st.text(max_size=8),
)
"""Values of every JSON type an upstream may put where a string belongs."""
STRING = st.one_of(st.text(max_size=8), st.text(max_size=8), ODD)
EVENT = st.builds(
    lambda kind, named, text, image, error: (
        (b"event: " + str(named).encode() + b"\n" if named is not None else b"")
        + b"data: "
        + orjson.dumps(
            {"type": kind, "text": text, "b64_json": image}
            | ({"error": error} if error is not None else {})
        )
        + b"\n\n"
    ),
    st.one_of(TYPES, TYPES, TYPES, ODD),
    st.one_of(st.none(), st.none(), TYPES),
    STRING,
    STRING,
    st.one_of(st.none(), st.none(), st.none(), st.just({"message": "no"})),
)
FRAME = st.one_of(EVENT, EVENT, EVENT, st.just(b"data: [DONE]\n\n"))
"""Frames drawn mostly well-formed, so that many streams end cleanly: an example where
nothing ever ends tests only that nothing raised."""
ENDS = {
    TRANSCRIPTIONS: ("transcript.text.done", "text"),
    SPEECH: ("speech.audio.done", None),
    IMAGES: ("image_generation.completed", "b64_json"),
    IMAGE_EDITS: ("image_edit.completed", "b64_json"),
}


def ended(kind: str) -> bytes:
    """A clean end of `kind`'s stream, among the hostile frames."""
    ending, held = ENDS[kind]
    return event(ending, **({held: "x"} if held else {}))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(ENDS)), st.data())
def test_any_frames_in_any_pieces_end_only_at_their_routes_end_holding_what_it_must(
    kind: str, data: st.DataObject
) -> None:
    """A hostile upstream's events: types of any JSON type, names that lie, errors anywhere,
    `[DONE]` anywhere, cut at any byte. The recorder never raises, takes the same bytes
    however they were cut, and is complete only at its route's end event holding what the
    SDK requires of it, with no error or `[DONE]` before."""
    frames = data.draw(st.lists(st.one_of(FRAME, st.just(ended(kind))), max_size=8))
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=2000), max_size=6))
    stream = b"".join(frames)
    whole = StreamRecorder(1 << 20, kind)
    taken = whole.feed(stream)
    pieces = StreamRecorder(1 << 20, kind)
    bounds = [0, *sorted(min(cut, len(stream)) for cut in cuts), len(stream)]
    cut_taken = b"".join(pieces.feed(stream[a:b]) for a, b in itertools.pairwise(bounds))
    assert (cut_taken, pieces.complete) == (taken, whole.complete)
    assert stream.startswith(taken) and whole.body() == taken
    if not whole.complete:
        return
    ends = list(itertools.accumulate(len(f) for f in frames))
    read = frames[: ends.index(len(taken)) + 1]  # the recorder stops at a frame's end
    assert b"".join(read) == taken and b"[DONE]" not in taken
    events = [orjson.loads(f.partition(b"data: ")[2]) for f in read]
    ending, held = ENDS[kind]
    assert events[-1]["type"] == ending and (held is None or isinstance(events[-1][held], str))
    assert all(e["type"] != "error" and "error" not in e for e in events)
    named = [f.partition(b"\n")[0] for f in read if f.startswith(b"event: ")]
    assert all(line[len(b"event: ") :].decode() in {e["type"] for e in events} for line in named)
