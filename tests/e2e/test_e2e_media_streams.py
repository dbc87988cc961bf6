"""A streamed transcript (`stream=true` on a transcription), speech asked for as events
(`stream_format: sse`) and a streamed image (generated or edited, partial takes first) are
cached like chat streams: relayed as they come, stored at their clean end, replayed byte for
byte, and offline in replay mode. The official SDK and raw clients through a real proxy to the
sim, and upstreams written here ending their streams otherwise."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
import pytest

from tests.fixtures_procs import Proxy, ProxyFactory, Sim, replaying, run_cli, stopped
from tests.hostile import Received, Scripted, http_answer, relayed_never_stored

KEY = "sk-listener"
AUTH = {"Authorization": f"Bearer {KEY}"}
AUDIO = b"ID3\x04\x00" + bytes(range(256)) * 8
STREAMED = {"model": "gpt-4o-transcribe", "stream": "true"}
SPOKEN = {"model": "gpt-4o-mini-tts", "voice": "alloy", "input": "Hello.", "stream_format": "sse"}
SSE = ("Content-Type: text/event-stream",)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)
PAINTED = {"model": "gpt-image-1", "prompt": "A lighthouse at dusk.", "partial_images": 2}


def upload(proxy: Proxy, fields: dict[str, str], audio: bytes = AUDIO) -> httpx.Response:
    return httpx.post(
        f"{proxy.v1}/audio/transcriptions",
        data=fields,
        files={"file": ("talk.mp3", audio, "audio/mpeg")},
        headers=AUTH,
        timeout=10,
    )


def asked(sim: Sim, route: str) -> int:
    return len([r for r in sim.requests() if str(r["path"]).endswith(route)])


def test_the_sdk_hears_the_same_streamed_transcript_the_second_time(proxy: Proxy, sim: Sim) -> None:
    """The sim draws one word anew on each call: only a HIT repeats a transcript."""
    audio = proxy.sdk(KEY).audio.transcriptions
    heard = []
    for _ in range(2):
        with audio.with_streaming_response.create(
            model="gpt-4o-transcribe", file=("talk.mp3", AUDIO), stream=True
        ) as response:
            state = response.headers["X-Repro-Cache"]
            events = list(response.parse())
        (done,) = [e for e in events if e.type == "transcript.text.done"]
        deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
        assert deltas.strip() == done.text
        heard.append((state, done.text))
    assert [state for state, _ in heard] == ["MISS", "HIT"]
    assert heard[0][1] == heard[1][1]
    assert asked(sim, "/audio/transcriptions") == 1


def test_a_streamed_transcript_is_another_key_than_the_whole_one(proxy: Proxy, sim: Sim) -> None:
    streamed = upload(proxy, STREAMED)
    whole = upload(proxy, {"model": "gpt-4o-transcribe"})
    assert (streamed.headers["X-Repro-Cache"], whole.headers["X-Repro-Cache"]) == ("MISS", "MISS")
    assert streamed.headers["Content-Type"].startswith("text/event-stream")
    assert whole.json()["text"]
    again = upload(proxy, STREAMED)
    assert again.headers["X-Repro-Cache"] == "HIT" and again.content == streamed.content
    assert b"[DONE]" not in again.content  # the relay ends where the answer ends
    assert asked(sim, "/audio/transcriptions") == 2


@pytest.mark.parametrize("spelt", ["True", "1", "yes"])
def test_a_form_stream_spelt_otherwise_than_true_or_false_is_never_cached(
    proxy: Proxy, sim: Sim, spelt: str
) -> None:
    """Upstreams disagree on what `1` means in a form: the proxy cannot know whether the
    answer will be events or one whole transcript."""
    fields = {**STREAMED, "stream": spelt}
    assert [upload(proxy, fields).headers["X-Repro-Cache"] for _ in range(2)] == ["BYPASS"] * 2
    assert asked(sim, "/audio/transcriptions") == 2


def test_speech_as_events_is_the_same_sound_the_second_time(proxy: Proxy, sim: Sim) -> None:
    first = proxy.post("/audio/speech", SPOKEN, key=KEY)
    again = proxy.post("/audio/speech", SPOKEN, key=KEY)
    assert (first.headers["X-Repro-Cache"], again.headers["X-Repro-Cache"]) == ("MISS", "HIT")
    assert first.content == again.content and b'"type":"speech.audio.done"' in again.content
    sound = proxy.post("/audio/speech", {**SPOKEN, "stream_format": "audio"}, key=KEY)
    assert sound.headers["X-Repro-Cache"] == "MISS" and sound.headers["Content-Type"] != (
        "text/event-stream"
    )
    other = proxy.post("/audio/speech", {**SPOKEN, "stream_format": "frames"}, key=KEY)
    assert other.headers["X-Repro-Cache"] == "BYPASS" and other.status_code == 400
    assert asked(sim, "/audio/speech") == 3


def test_recorded_media_streams_replay_offline(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    heard = upload(recorder, STREAMED)
    spoken = recorder.post("/audio/speech", SPOKEN, key=KEY)
    drawn = recorder.post("/images/generations", {**PAINTED, "stream": True}, key=KEY)
    assert {r.headers["X-Repro-Cache"] for r in (heard, spoken, drawn)} == {"MISS"}
    offline = replaying(start_proxy, recorder, tape, "--cache-scope", "shared")
    lines = [orjson.loads(text) for text in tape.read_text().splitlines()]
    assert sorted((line["route"], line["stream"]) for line in lines) == [
        ("/v1/audio/speech", True),
        ("/v1/audio/transcriptions", True),
        ("/v1/images/generations", True),
    ]
    with offline.sdk(KEY).audio.transcriptions.with_streaming_response.create(
        model="gpt-4o-transcribe", file=("again.mp3", AUDIO), stream=True
    ) as response:
        assert response.headers["X-Repro-Cache"] == "HIT"
        events = list(response.parse())
    assert events[-1].type == "transcript.text.done" and events[-1].text in heard.text
    replayed = offline.post("/audio/speech", SPOKEN, key=KEY)
    assert replayed.headers["X-Repro-Cache"] == "HIT" and replayed.content == spoken.content
    again = offline.post("/images/generations", {**PAINTED, "stream": True}, key=KEY)
    assert again.headers["X-Repro-Cache"] == "HIT" and again.content == drawn.content
    missed = upload(offline, STREAMED, audio=b"never heard")
    assert missed.status_code == 504 and missed.json()["error"]["code"] == "cache_miss"


def frame(kind: str, **fields: object) -> bytes:
    return b"data: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"


DELTA = frame("transcript.text.delta", delta="Hi")


@pytest.mark.parametrize(
    "stream",
    [
        DELTA,
        DELTA + frame("error", error={"message": "The server had an error."}),
        DELTA + frame("transcript.text.done"),
        DELTA + b"data: [DONE]\n\n",
        DELTA + b"event: error\n" + frame("transcript.text.done", text="Hi"),
        b'data: {"type": ["transcript.text.done"], "text": "Hi"}\n\n',
    ],
    ids=["no-end", "error-event", "end-without-text", "done-marker-only", "misnamed", "type-list"],
)
def test_a_transcript_stream_that_is_no_answer_is_relayed_and_never_stored(
    start_proxy: ProxyFactory, stream: bytes
) -> None:
    """Stored, every later caller's client would fail on it, or read an error as a transcript,
    for as long as the entry lived."""
    relayed_never_stored(start_proxy, stream, SSE, lambda proxy: upload(proxy, STREAMED))


def test_events_sent_for_a_whole_transcript_are_relayed_and_never_stored(
    start_proxy: ProxyFactory,
) -> None:
    """An upstream streaming where the request asked for one transcript: stored, it would be
    served to every later whole request, whose client reads one JSON object or text."""
    stream = DELTA + frame("transcript.text.done", text="Hi")
    whole = {"model": "whisper-1", "response_format": "text"}
    relayed_never_stored(start_proxy, stream, SSE, lambda proxy: upload(proxy, whole))


def test_speech_events_cut_before_their_end_are_never_stored(start_proxy: ProxyFactory) -> None:
    stream = frame("speech.audio.delta", audio="SUQz")
    relayed_never_stored(
        start_proxy, stream, SSE, lambda proxy: proxy.post("/audio/speech", SPOKEN, key=KEY)
    )


def test_a_sampled_hit_on_a_streamed_transcript_compares_its_text(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """The sim's transcripts end in a word drawn anew: the fresh stream's text differs by one
    word, which a sampler reading no text (or failing on events) would miss or count as an
    error."""
    proxy = start_proxy("--verify-rate", "1")
    assert [upload(proxy, STREAMED).headers["X-Repro-Cache"] for _ in range(2)] == ["MISS", "HIT"]
    model = STREAMED["model"]
    checked = proxy.metric_reaching("repro_verify_total", 1, model=model, result="differs")
    same = proxy.metric("repro_verify_total", model=model, result="same")
    assert checked + same == 1
    assert proxy.metric("repro_verify_total", model=model, result="error") == 0
    assert asked(sim, "/audio/transcriptions") == 2


def test_a_sampled_hit_whose_fresh_stream_says_the_same_in_other_chunks_is_the_same(
    start_proxy: ProxyFactory,
) -> None:
    """A model streams the same words in other pieces from one call to the next: the bytes
    differ, the transcript does not, and only a sampler reading the text says so."""
    text = "The keeper lit the lamp."
    takes = [("The keeper ", "lit the lamp."), ("The ", "keeper lit ", "the lamp.")]

    async def write(writer: asyncio.StreamWriter, received: Received) -> None:
        pieces = takes[len(calls) % 2]
        calls.append(received)
        deltas = b"".join(frame("transcript.text.delta", delta=piece) for piece in pieces)
        stream = deltas + frame("transcript.text.done", text=text)
        writer.write(http_answer(stream, *SSE))

    calls: list[Received] = []
    with Scripted(write) as upstream:
        proxy = start_proxy("--verify-rate", "1", upstream=upstream.v1)
        served = [upload(proxy, STREAMED) for _ in range(2)]
        assert [s.headers["X-Repro-Cache"] for s in served] == ["MISS", "HIT"]
        model = STREAMED["model"]
        assert proxy.metric_reaching("repro_verify_total", 1, model=model, result="same") == 1
        assert proxy.metric("repro_verify_total", model=model, result="differs") == 0
        assert len(calls) == 2 and served[1].content == served[0].content


@pytest.mark.parametrize("kind", [b"[]", b"{}", b"7", b"null"])
def test_a_responses_event_whose_type_is_no_string_is_relayed_and_never_stored(
    start_proxy: ProxyFactory, kind: bytes
) -> None:
    """Every typed stream is read alike: an unhashable `type` once raised in the relay, which
    then answered nothing readable."""
    stream = b'data: {"type": ' + kind + b', "response": {"id": "resp_1"}}\n\n'
    body = {"model": "gpt-4o-mini", "input": "Hi.", "stream": True}
    relayed_never_stored(
        start_proxy, stream, SSE, lambda proxy: proxy.post("/responses", body, key=KEY)
    )


def test_the_sdk_sees_the_same_image_drawn_again_partial_takes_and_all(
    proxy: Proxy, sim: Sim
) -> None:
    images = proxy.sdk(KEY).images
    seen = []
    for _ in range(2):
        with images.with_streaming_response.generate(**PAINTED, stream=True) as response:
            state = response.headers["X-Repro-Cache"]
            events = list(response.parse())
        assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + [
            "image_generation.completed"
        ]
        seen.append((state, [e.b64_json for e in events]))
    assert [state for state, _ in seen] == ["MISS", "HIT"] and seen[0][1] == seen[1][1]
    whole = images.with_raw_response.generate(**PAINTED)
    assert whole.headers["X-Repro-Cache"] == "MISS"  # one whole image is another answer
    assert asked(sim, "/images/generations") == 2


def test_a_streamed_edit_of_an_upload_is_cached(proxy: Proxy, sim: Sim) -> None:
    images = proxy.sdk(KEY).images
    finals = []
    for _ in range(2):
        with images.with_streaming_response.edit(
            model="gpt-image-1", image=("a.png", PNG, "image/png"), prompt="Add a hat.", stream=True
        ) as response:
            state = response.headers["X-Repro-Cache"]
            (done,) = [e for e in response.parse() if e.type == "image_edit.completed"]
        finals.append((state, done.b64_json))
    assert [state for state, _ in finals] == ["MISS", "HIT"] and finals[0][1] == finals[1][1]
    assert asked(sim, "/images/edits") == 1


def test_a_stream_of_several_images_reaches_the_client_whole_and_is_never_cached(
    proxy: Proxy, sim: Sim
) -> None:
    """Such a stream ends once per image: relayed to its last, never stored at its first."""
    body = {**PAINTED, "n": 3, "partial_images": 0, "stream": True}
    for _ in range(2):
        drawn = proxy.post("/images/generations", body, key=KEY)
        assert drawn.status_code == 200 and drawn.headers["X-Repro-Cache"] == "BYPASS"
        assert drawn.content.count(b'"type":"image_generation.completed"') == 3
    assert asked(sim, "/images/generations") == 2


IMAGE_TAKE = b"event: image_generation.partial_image\n" + frame(
    "image_generation.partial_image", b64_json="cGFy", partial_image_index=0
)


@pytest.mark.parametrize(
    "stream",
    [
        IMAGE_TAKE,
        IMAGE_TAKE + frame("image_generation.completed"),
        IMAGE_TAKE + frame("error", error={"message": "Your request was rejected."}),
        IMAGE_TAKE + frame("image_edit.completed", b64_json="aW1n"),
    ],
    ids=["partial-only", "final-without-image", "error-event", "another-routes-end"],
)
def test_an_image_stream_that_is_no_answer_is_relayed_and_never_stored(
    start_proxy: ProxyFactory, stream: bytes
) -> None:
    body = {**PAINTED, "stream": True}
    relayed_never_stored(
        start_proxy, stream, SSE, lambda proxy: proxy.post("/images/generations", body, key=KEY)
    )


def test_a_diff_of_two_recordings_tells_a_new_take_of_speech_as_wholly_changed(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """The sim's speech is another take each time: the sound differs, and a distance counted
    between two digests' characters would call it a little different."""
    tapes = [tmp_path / "old.jsonl", tmp_path / "new.jsonl"]
    for tape in tapes:
        recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
        for body in (SPOKEN, {**SPOKEN, "stream_format": "audio"}):
            assert recorder.post("/audio/speech", body, key=KEY).headers["X-Repro-Cache"] == "MISS"
        stopped(recorder)
    result = run_cli("cassette", "diff", "--json", *map(str, tapes))
    assert result.returncode == 1, result.stderr
    report = orjson.loads(result.stdout)
    assert report["summary"]["changed"] == 2
    assert [row["distance"] for row in report["requests"]] == [1.0, 1.0]
