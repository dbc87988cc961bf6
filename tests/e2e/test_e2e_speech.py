"""Speech (`POST /v1/audio/speech`) is cached: the same words in the same voice are the same
sound the second time, at no cost, and a voice app's test suite runs offline in replay mode.
The official SDK through a real proxy to the sim, and upstreams written here to answer what no
sound is."""

from __future__ import annotations

import asyncio
import base64
import signal
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.fixtures_procs import Proxy, ProxyFactory, Sim, azure_client
from tests.hostile import Received, Scripted, fixed, relayed_never_stored

KEY = "sk-speaker"
AUTH = {"Authorization": f"Bearer {KEY}"}
HELLO = {"model": "tts-1", "voice": "alloy", "input": "Hello, and welcome."}


def speak(proxy: Proxy, body: dict[str, object], path: str = "/audio/speech") -> httpx.Response:
    return proxy.post(path, body, key=KEY)


def test_the_same_words_are_the_same_sound_the_second_time(proxy: Proxy, sim: Sim) -> None:
    speech = proxy.sdk(KEY).audio.speech
    first = speech.with_raw_response.create(model="tts-1", voice="alloy", input="Hello there")
    again = speech.with_raw_response.create(model="tts-1", voice="alloy", input="Hello there")
    assert (first.headers["X-Repro-Cache"], again.headers["X-Repro-Cache"]) == ("MISS", "HIT")
    assert again.headers["Content-Type"] == "audio/mpeg"
    sound = again.content
    assert sound == first.content and sound.startswith(b"ID3")
    (asked,) = [r for r in sim.requests() if r["path"] == "/v1/audio/speech"]
    assert "seed" not in orjson.loads(asked["body"])  # speech takes no seed
    assert "X-Repro-Seed" not in again.headers
    other = speech.with_raw_response.create(model="tts-1", voice="echo", input="Hello there")
    assert other.headers["X-Repro-Cache"] == "MISS" and other.content != sound
    assert proxy.metric("repro_cache_hits_total", model="tts-1") == 1


def test_the_defaults_spelled_out_are_one_key_and_another_format_is_not(
    proxy: Proxy, sim: Sim
) -> None:
    plain = speak(proxy, HELLO)
    spelled = speak(proxy, {**HELLO, "response_format": "mp3", "speed": 1.0})
    streamed_as_audio = speak(proxy, {**HELLO, "stream_format": "audio"})
    wav = speak(proxy, {**HELLO, "response_format": "wav"})
    assert [r.headers["X-Repro-Cache"] for r in (plain, spelled, streamed_as_audio, wav)] == [
        "MISS",
        "HIT",
        "HIT",
        "MISS",
    ]
    assert spelled.content == plain.content
    assert wav.headers["Content-Type"] == "audio/wav" and wav.content.startswith(b"RIFF")
    assert speak(proxy, {**HELLO, "response_format": "wav"}).content == wav.content


def test_the_sdk_streams_a_cached_answer_to_a_file(proxy: Proxy, sim: Sim, tmp_path: Path) -> None:
    speech = proxy.sdk(KEY).audio.speech
    for name in ("first.mp3", "again.mp3"):
        with speech.with_streaming_response.create(**HELLO) as answer:  # type: ignore[arg-type]
            answer.stream_to_file(tmp_path / name)
    assert (tmp_path / "first.mp3").read_bytes() == (tmp_path / "again.mp3").read_bytes()
    assert len([r for r in sim.requests() if r["path"] == "/v1/audio/speech"]) == 1


def test_a_recorded_voice_replays_offline(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    recorded = speak(recorder, {**HELLO, "response_format": "pcm"})
    assert recorded.headers["X-Repro-Cache"] == "MISS"
    recorder.proc.send_signal(signal.SIGTERM)
    assert recorder.proc.wait(timeout=15) == 0
    (line,) = [orjson.loads(text) for text in tape.read_text().splitlines()]
    assert line["content_type"] == "audio/pcm" and "body_base64" in line
    replaying = start_proxy(
        "--cache-scope", "shared", "--cassette", str(tape), "--cache-mode", "replay",
        upstream="http://127.0.0.1:9/v1",
    )  # fmt: skip
    replayed = speak(replaying, {**HELLO, "response_format": "pcm"})
    assert replayed.headers["X-Repro-Cache"] == "HIT"
    assert replayed.content == recorded.content
    assert replayed.headers["Content-Type"] == "audio/pcm"
    missed = speak(replaying, {**HELLO, "input": "never said"})
    assert missed.status_code == 504 and missed.json()["error"]["code"] == "cache_miss"


def test_an_azure_deployment_speaks_from_the_cache(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy(upstream=sim.url)  # Azure: the resource's root
    speech = azure_client(proxy, "voices").audio.speech
    asked = {"model": "tts-deploy", "voice": "nova", "input": "From Azure."}
    first = speech.with_raw_response.create(**asked)  # type: ignore[arg-type]
    again = speech.with_raw_response.create(**asked)  # type: ignore[arg-type]
    assert (first.headers["X-Repro-Cache"], again.headers["X-Repro-Cache"]) == ("MISS", "HIT")
    assert again.content == first.content and again.headers["Content-Type"] == "audio/mpeg"
    (sent,) = [r for r in sim.requests() if r["path"].endswith("/audio/speech")]
    assert sent["path"] == "/openai/deployments/tts-deploy/audio/speech"
    route = "/openai/deployments/{deployment}/audio/speech"
    assert proxy.metric("repro_requests_total", route=route, cache="hit") == 1


def test_a_hit_on_speech_is_never_sampled_for_drift(start_proxy: ProxyFactory, sim: Sim) -> None:
    """A voice says the same words anew each time: a fresh take always differs from the stored
    one, and names no fingerprint, so re-asking would cost a call and measure nothing."""
    proxy = start_proxy("--verify-rate", "1")
    assert [speak(proxy, HELLO).headers["X-Repro-Cache"] for _ in range(3)] == [
        "MISS",
        "HIT",
        "HIT",
    ]
    chat = proxy.chat("drift me")
    assert chat.headers["X-Repro-Cache"] == "MISS"
    assert proxy.chat("drift me").headers["X-Repro-Cache"] == "HIT"
    assert proxy.metric_reaching("repro_verify_total", 1, model="gpt-4o-mini", result="same") == 1
    assert len([r for r in sim.requests() if r["path"] == "/v1/audio/speech"]) == 1


@pytest.mark.parametrize(
    ("answer", "content_type"),
    [
        (b'{"error": {"message": "overloaded"}}', "application/json"),
        (b"", "audio/mpeg"),
        (b"<html>maintenance</html>", "text/html"),
        (b"ID3\x04\x00sound", ""),
    ],
    ids=["json-error", "empty", "html", "unlabelled"],
)
def test_an_answer_that_is_no_sound_is_relayed_and_never_stored(
    start_proxy: ProxyFactory, answer: bytes, content_type: str
) -> None:
    """A gateway's error sent with 200, a maintenance page, nothing at all: stored, every later
    caller would be played it for as long as the entry lived."""
    labelled = (f"Content-Type: {content_type}",) if content_type else ()
    relayed_never_stored(start_proxy, answer, labelled, lambda proxy: speak(proxy, HELLO))


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)


SOUND_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: audio/mpeg\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_the_first_words_are_heard_before_the_upstream_has_said_the_last(
    start_proxy: ProxyFactory,
) -> None:
    """A miss relays the sound as it comes (an app plays speech as it arrives): the client
    has the first chunk while the upstream still holds the rest; the whole is stored."""
    rest = threading.Event()

    async def answer(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(SOUND_HEAD + chunked(b"ID3 first words "))
        await writer.drain()
        await asyncio.get_running_loop().run_in_executor(None, rest.wait, 10)
        writer.write(chunked(b"and the last.") + b"0\r\n\r\n")
        await writer.drain()

    with Scripted(answer) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        with httpx.stream(
            "POST", proxy.v1 + "/audio/speech", json=HELLO, headers=AUTH, timeout=10
        ) as relayed:
            assert relayed.headers["X-Repro-Cache"] == "MISS"
            heard = relayed.iter_raw()
            assert next(heard) == b"ID3 first words "  # while the upstream holds the rest
            rest.set()
            assert b"".join(heard) == b"and the last."
        again = speak(proxy, HELLO)
        assert again.headers["X-Repro-Cache"] == "HIT"
        assert again.content == b"ID3 first words and the last."
        assert len(upstream.received) == 1


def test_sound_a_client_left_is_read_on_and_stored(start_proxy: ProxyFactory) -> None:
    """`--stream-disconnect finish` (the default): the retry of a client that hung up on the
    first words is a HIT, as a stream's is."""
    rest, said = threading.Event(), threading.Event()

    async def answer(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(SOUND_HEAD + chunked(b"ID3 first words "))
        await writer.drain()
        await asyncio.get_running_loop().run_in_executor(None, rest.wait, 10)
        for piece in (b"and more ", b"and the last."):
            await asyncio.sleep(0.2)
            writer.write(chunked(piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        said.set()

    with Scripted(answer) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        with httpx.stream(
            "POST", proxy.v1 + "/audio/speech", json=HELLO, headers=AUTH, timeout=10
        ) as relayed:
            assert next(relayed.iter_raw()) == b"ID3 first words "
        rest.set()
        assert said.wait(10)
        time.sleep(0.5)  # the proxy reads the end and stores: no signal of it but the HIT
        hit = speak(proxy, HELLO)
        assert hit.headers["X-Repro-Cache"] == "HIT"
        assert hit.content == b"ID3 first words and more and the last."
        assert len(upstream.received) == 1


def test_sound_cut_short_by_the_upstream_is_cut_short_and_never_stored(
    start_proxy: ProxyFactory,
) -> None:
    """The client hears the break as sent (its connection closed mid-body), and the next
    caller is not played half a sentence from the cache."""

    async def answer(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(SOUND_HEAD + chunked(b"ID3 half a sen"))
        await writer.drain()
        writer.close()

    with Scripted(answer) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        for _ in range(2):
            with pytest.raises(httpx.RemoteProtocolError):
                speak(proxy, HELLO)
        assert len(upstream.received) == 2


def test_sound_longer_than_max_entry_is_heard_whole_and_never_stored(
    start_proxy: ProxyFactory,
) -> None:
    long = [b"ID3" + b"\x01" * 4000] + [b"\x02" * 4000] * 3
    whole = SOUND_HEAD + chunked(*long) + b"0\r\n\r\n"
    with Scripted(fixed(whole)) as upstream:
        proxy = start_proxy("--max-entry", "10000", upstream=upstream.v1)
        for _ in range(2):
            heard = speak(proxy, HELLO)
            assert heard.status_code == 200 and heard.content == b"".join(long)
            assert heard.headers["X-Repro-Cache"] == "MISS"
        assert len(upstream.received) == 2


def test_a_custom_voice_is_its_owners_alone_in_shared_scope(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """A custom voice is made from its owner's recordings: in `shared` scope another tenant
    asking with its id is not played the owner's take from the cache."""
    proxy = start_proxy("--cache-scope", "shared")
    custom = {**HELLO, "model": "gpt-4o-mini-tts", "voice": {"id": "voice_owner1"}}
    owner = [proxy.post("/audio/speech", custom, key="sk-owner") for _ in range(2)]
    assert [r.headers["X-Repro-Cache"] for r in owner] == ["MISS", "HIT"]
    other = proxy.post("/audio/speech", custom, key="sk-other")
    assert other.headers["X-Repro-Cache"] == "MISS" and other.content != owner[0].content
    shared = [proxy.post("/audio/speech", HELLO, key=key) for key in ("sk-owner", "sk-other")]
    assert [r.headers["X-Repro-Cache"] for r in shared] == ["MISS", "HIT"]


def test_two_replicas_sharing_redis_share_sound_and_transcripts(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str
) -> None:
    """Bytes that are not text, stored sealed in Redis by one replica, read by another: the
    sound and its label as sent, and a transcript asked with another client's form."""
    flags = ("--store", redis_url, "--encryption-key", base64.b64encode(b"k" * 32).decode())
    first, second = start_proxy(*flags), start_proxy(*flags)
    spoken = speak(first, {**HELLO, "response_format": "wav"})
    heard = speak(second, {**HELLO, "response_format": "wav"})
    assert (spoken.headers["X-Repro-Cache"], heard.headers["X-Repro-Cache"]) == ("MISS", "HIT")
    assert heard.content == spoken.content and heard.headers["Content-Type"] == "audio/wav"
    clip = ("clip.mp3", b"ID3 shared clip", "audio/mpeg")
    made = first.sdk(KEY).audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=clip
    )
    read = httpx.post(
        second.v1 + "/audio/transcriptions",
        data={"model": "whisper-1"},
        files={"file": ("other.mp3", b"ID3 shared clip", "audio/mpeg")},
        headers=AUTH,
        timeout=10,
    )
    assert (made.headers["X-Repro-Cache"], read.headers["X-Repro-Cache"]) == ("MISS", "HIT")
    assert read.json()["text"] == made.parse().text
