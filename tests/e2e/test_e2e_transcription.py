"""Transcriptions and translations (`POST /v1/audio/transcriptions`, `/v1/audio/translations`)
are cached: an upload is a multipart form, keyed by its fields and its file's digest, and sent
upstream as the proxy wrote it again. The official SDK and raw clients through a real proxy to
the sim (which reads forms with another parser than the proxy's), hostile clients writing forms
two readers could read apart, and upstreams written here answering what no transcript is."""

from __future__ import annotations

import base64
import signal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from proxy.core.weight import OFF_LOOP_BODY
from tests.fixtures_procs import Proxy, ProxyFactory, Sim, azure_client
from tests.hostile import relayed_never_stored

KEY = "sk-listener"
AUDIO = b"ID3\x04\x00" + bytes(range(256)) * 8  # stands for an mp3: the sim reads only bytes
AUTH = {"Authorization": f"Bearer {KEY}"}


def upload(
    proxy: Proxy,
    fields: dict[str, str],
    audio: bytes = AUDIO,
    name: str = "talk.mp3",
    route: str = "transcriptions",
) -> httpx.Response:
    """A form as httpx writes one (its own boundary), not the SDK."""
    return httpx.post(
        f"{proxy.v1}/audio/{route}",
        data=fields,
        files={"file": (name, audio, "audio/mpeg")},
        headers=AUTH,
        timeout=10,
    )


def raw_form(proxy: Proxy, body: bytes, boundary: str = "b0und") -> httpx.Response:
    return httpx.post(
        proxy.v1 + "/audio/transcriptions",
        content=body,
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=10,
    )


def part(disposition: str, value: bytes, *headers: str) -> bytes:
    lines = [f"Content-Disposition: form-data; {disposition}", *headers]
    return b"--b0und\r\n" + "\r\n".join(lines).encode() + b"\r\n\r\n" + value + b"\r\n"


END = b"--b0und--\r\n"


def asked(sim: Sim, route: str = "transcriptions") -> list[dict[str, Any]]:
    return [r for r in sim.requests() if str(r["path"]).endswith("/audio/" + route)]


def body_of(request: dict[str, Any]) -> bytes:
    """A request's body as the sim recorded it (base64 when it was not text)."""
    body = str(request["body"])
    return base64.b64decode(body) if request["body_base64"] else body.encode()


def test_the_same_recording_is_the_same_transcript_the_second_time(
    proxy: Proxy, sim: Sim, tmp_path: Path
) -> None:
    recording = tmp_path / "meeting.mp3"
    recording.write_bytes(AUDIO)
    audio = proxy.sdk(KEY).audio.transcriptions
    with recording.open("rb") as first_file, recording.open("rb") as again_file:
        first = audio.with_raw_response.create(model="gpt-4o-transcribe", file=first_file)
        again = audio.with_raw_response.create(model="gpt-4o-transcribe", file=again_file)
    assert (first.headers["X-Repro-Cache"], again.headers["X-Repro-Cache"]) == ("MISS", "HIT")
    heard = again.parse()
    assert heard.text == first.parse().text and heard.text
    (sent,) = asked(sim)
    assert sent["headers"]["Content-Type"].startswith("multipart/form-data; boundary=repro-")
    assert b'filename="upload.mp3"' in body_of(sent) and b"meeting" not in body_of(sent)
    assert "X-Repro-Seed" not in again.headers
    saved = proxy.metric("repro_tokens_saved_total", model="gpt-4o-transcribe", type="completion")
    assert saved == len(heard.text.split()) > 0


def test_a_form_is_keyed_by_what_it_says_not_how_it_was_written(proxy: Proxy, sim: Sim) -> None:
    """Another client's boundary, another filename, a default spelled out: one key. Other
    bytes, another format or another route: another."""
    sdk = proxy.sdk(KEY).audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("a.mp3", AUDIO, "audio/mpeg")
    )
    same = [
        upload(proxy, {"model": "whisper-1"}, name="other name.MP3"),
        upload(proxy, {"model": "whisper-1", "response_format": "json", "temperature": "0.0"}),
        upload(proxy, {"model": "whisper-1", "temperature": "0"}),
    ]
    assert sdk.headers["X-Repro-Cache"] == "MISS"
    assert [r.headers["X-Repro-Cache"] for r in same] == ["HIT"] * 3
    assert {r.headers["X-Repro-Key"] for r in same} == {sdk.headers["X-Repro-Key"]}
    other = [
        upload(proxy, {"model": "whisper-1"}, audio=AUDIO + b"\x00"),
        upload(proxy, {"model": "whisper-1"}, name="talk.wav"),
        upload(proxy, {"model": "whisper-1", "language": "en"}),
        upload(proxy, {"model": "whisper-1"}, route="translations"),
    ]
    assert [r.headers["X-Repro-Cache"] for r in other] == ["MISS"] * 4
    text = [upload(proxy, {"model": "whisper-1", "response_format": "srt"}) for _ in range(2)]
    assert [r.headers["X-Repro-Cache"] for r in text] == ["MISS", "HIT"]
    assert text[1].headers["Content-Type"] == "text/plain; charset=utf-8"
    assert text[1].text == text[0].text and text[1].text.startswith("1\n00:00:00,000 --> ")


def test_a_recorded_transcript_replays_offline_and_the_cassette_holds_no_audio(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    said = recorder.sdk(KEY).audio.transcriptions.create(model="whisper-1", file=("a.mp3", AUDIO))
    recorder.proc.send_signal(signal.SIGTERM)
    assert recorder.proc.wait(timeout=15) == 0
    (line,) = [orjson.loads(text) for text in tape.read_text().splitlines()]
    assert line["route"] == "/v1/audio/transcriptions"
    assert line["request"]["file"]["bytes"] == len(AUDIO)
    assert AUDIO.hex()[:64] not in tape.read_text() and "ID3" not in tape.read_text()
    replaying = start_proxy(
        "--cache-scope", "shared", "--cassette", str(tape), "--cache-mode", "replay",
        upstream="http://127.0.0.1:9/v1",
    )  # fmt: skip
    audio = replaying.sdk(KEY).audio.transcriptions
    again = audio.create(model="whisper-1", file=("b.mp3", AUDIO))
    assert again.text == said.text
    missed = upload(replaying, {"model": "whisper-1"}, audio=b"other")
    assert missed.status_code == 504 and missed.json()["error"]["code"] == "cache_miss"


def test_an_azure_deployment_transcribes_from_the_cache(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy(upstream=sim.url)  # Azure: the resource's root
    audio = azure_client(proxy, "meetings").audio.transcriptions
    first = audio.with_raw_response.create(model="whisper-deploy", file=("a.mp3", AUDIO))
    again = audio.with_raw_response.create(model="whisper-deploy", file=("a.mp3", AUDIO))
    assert (first.headers["X-Repro-Cache"], again.headers["X-Repro-Cache"]) == ("MISS", "HIT")
    (sent,) = asked(sim)
    assert sent["path"] == "/openai/deployments/whisper-deploy/audio/transcriptions"


def test_in_shared_scope_an_open_upstream_lets_another_tenant_read(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """The key check's test of an open upstream sends the form as written (a store keeps only
    the file's digest, which no upstream can transcribe)."""
    proxy = start_proxy("--cache-scope", "shared")
    fields = {"model": "whisper-1"}
    owner = upload(proxy, fields)
    other = httpx.post(
        f"{proxy.v1}/audio/transcriptions",
        data=fields,
        files={"file": ("talk.mp3", AUDIO, "audio/mpeg")},
        headers={"Authorization": "Bearer sk-someone-else"},
        timeout=10,
    )
    assert (owner.headers["X-Repro-Cache"], other.headers["X-Repro-Cache"]) == ("MISS", "HIT")
    strangers = [r for r in asked(sim) if r["headers"].get("Authorization") != f"Bearer {KEY}"]
    assert len(strangers) == 1 and b'filename="upload.mp3"' in body_of(strangers[0])


def test_a_sampled_hit_compares_the_transcripts_text(start_proxy: ProxyFactory, sim: Sim) -> None:
    """The sim's transcripts end in a word drawn anew: a fresh one differs by one word."""
    proxy = start_proxy("--verify-rate", "1")
    fields = {"model": "whisper-1", "response_format": "text"}
    assert [upload(proxy, fields).headers["X-Repro-Cache"] for _ in range(2)] == ["MISS", "HIT"]
    checked = proxy.metric_reaching("repro_verify_total", 1, model="whisper-1", result="differs")
    same = proxy.metric("repro_verify_total", model="whisper-1", result="same")
    assert checked + same == 1
    assert proxy.metric("repro_verify_total", model="whisper-1", result="error") == 0
    assert len(asked(sim)) == 2


WELL_FORMED = part('name="model"', b"whisper-1") + part('name="file"; filename="a.mp3"', AUDIO)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (WELL_FORMED, "invalid_body"),  # no closing delimiter
        (WELL_FORMED + part('name="model"', b"gpt-4o-transcribe") + END, "invalid_value"),
        (WELL_FORMED + part('name="x"', b"1", "Content-Transfer-Encoding: base64") + END,
         "invalid_body"),
        (WELL_FORMED + part('name="x"', b"1", "Content-Disposition: form-data") + END,
         "invalid_body"),
        (WELL_FORMED + part('name="mo\\"del"', b"x") + END, "invalid_body"),
        (WELL_FORMED + part('name="prompt"', "caf\u00e9".encode("latin-1")) + END,
         "invalid_value"),
        (b"--other\r\n" + WELL_FORMED[len(b"--b0und\r\n") :] + b"--other--\r\n", "invalid_body"),
    ],
    ids=["cut", "model-twice", "transfer-encoded", "two-dispositions", "quote-in-name",
         "not-utf8", "other-boundary"],
)  # fmt: skip
def test_a_form_two_readers_could_read_apart_is_refused(
    proxy: Proxy, sim: Sim, body: bytes, code: str
) -> None:
    """Which `model` counts, whether a part is base64, where a quoted name ends: each reader
    decides for itself, and the key would name one question while the upstream answered
    another. Refused before anything reaches the upstream."""
    refused = raw_form(proxy, body)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == code
    assert asked(sim) == []


def test_a_transcription_route_reads_a_form_or_passes_json_on(proxy: Proxy, sim: Sim) -> None:
    """JSON is read as JSON, as on every route (image edits take it), and its answer relayed;
    a body of any other type is refused before it reaches the upstream."""
    sent = httpx.post(
        proxy.v1 + "/audio/transcriptions", json={"model": "whisper-1"}, headers=AUTH, timeout=10
    )
    assert sent.status_code == 400 and sent.headers["X-Repro-Cache"] == "MISS"
    assert "multipart/form-data" in sent.json()["error"]["message"]  # the sim's own refusal
    typed = {**AUTH, "Content-Type": "text/plain"}
    plain = httpx.post(proxy.v1 + "/audio/transcriptions", content=b"x", headers=typed)
    assert plain.status_code == 400 and plain.json()["error"]["code"] == "invalid_header"
    assert plain.json()["error"]["param"] == "Content-Type"
    assert len(asked(sim)) == 1


@pytest.mark.parametrize(
    ("answer", "content_type"),
    [
        (b'{"error": {"message": "overloaded"}, "text": ""}', "application/json"),
        (b'{"transcript": "hello"}', "application/json"),
        (b"<html>maintenance</html>", "text/html"),
        (b"  \n", "text/plain"),
        (b"hello", ""),
    ],
    ids=["json-error", "no-text", "html", "blank", "unlabelled"],
)
def test_an_answer_that_is_no_transcript_is_relayed_and_never_stored(
    start_proxy: ProxyFactory, answer: bytes, content_type: str
) -> None:
    labelled = (f"Content-Type: {content_type}",) if content_type else ()
    ask = {"model": "whisper-1"}
    relayed_never_stored(start_proxy, answer, labelled, lambda proxy: upload(proxy, ask))


def test_a_long_recording_is_read_in_the_offload_child_and_cached(proxy: Proxy, sim: Sim) -> None:
    """An upload past OFF_LOOP_BODY is read, hashed and written again off the event loop."""
    long = AUDIO * (3 * OFF_LOOP_BODY // len(AUDIO))
    sent = [upload(proxy, {"model": "whisper-1"}, audio=long) for _ in range(2)]
    assert [r.headers["X-Repro-Cache"] for r in sent] == ["MISS", "HIT"]
    assert sent[1].json() == sent[0].json()
    (asked_once,) = asked(sim)
    assert len(body_of(asked_once)) > len(long)
