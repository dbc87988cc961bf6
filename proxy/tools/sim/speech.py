"""The simulator's speech (`POST /v1/audio/speech`): sound whose bytes come from the input, the
voice and noise drawn per call, so two calls differ as a real voice's takings do and a cache is
what makes them alike. As OpenAI's: the audio in the asked `response_format`, labelled with its
type and sent chunked; with `stream_format: sse`, events carrying it in base64 instead.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import struct

from proxy.tools.sim.state import JSON, BadRequest, Said

MAX_INPUT = 4096  # OpenAI's own limit of characters per request
FORMATS = {
    "mp3": ("audio/mpeg", b"ID3\x04\x00\x00\x00\x00\x00\x00"),
    "opus": ("audio/opus", b"OggS\x00\x02"),
    "aac": ("audio/aac", b"\xff\xf1\x50\x80"),
    "flac": ("audio/flac", b"fLaC"),
    "wav": ("audio/wav", b""),
    "pcm": ("audio/pcm", b""),
}
SAMPLES_PER_CHARACTER = 64
"""The sim's speech is short: 8 kHz, 8-bit, this many samples a character, 8 ms."""


def speech_reply(body: JSON) -> Said:
    """The audio and its type; the events of an `sse` answer."""
    text = body.get("input")
    if not isinstance(text, str) or not text or len(text) > MAX_INPUT:
        raise BadRequest(f"input must be a string of 1 to {MAX_INPUT} characters", "input")
    if not isinstance(body.get("model", "tts-1"), str):  # an Azure deployment names none
        raise BadRequest("model must be a string", "model")
    voice = body.get("voice")
    if not isinstance(voice, str | dict) or not voice:
        raise BadRequest("voice must be a voice's name or {id}", "voice")
    chosen = body.get("response_format", "mp3")
    if chosen not in FORMATS:
        raise BadRequest("response_format must be one of " + ", ".join(FORMATS), "response_format")
    speed = body.get("speed", 1)
    if not isinstance(speed, int | float) or isinstance(speed, bool) or not 0.25 <= speed <= 4:
        raise BadRequest("speed must be a number from 0.25 to 4", "speed")
    streamed = body.get("stream_format", "audio")
    if streamed not in ("audio", "sse"):
        raise BadRequest("stream_format must be audio or sse", "stream_format")
    content_type, head = FORMATS[str(chosen)]
    samples = _samples(text + repr(voice), int(len(text) * SAMPLES_PER_CHARACTER / speed))
    sound = _wav(samples) if chosen == "wav" else head + samples
    if streamed == "sse":
        delta = {"type": "speech.audio.delta", "audio": base64.b64encode(sound).decode()}
        words = len(text.split())
        usage = {"input_tokens": words, "output_tokens": len(samples) // 64}
        return [delta, {"type": "speech.audio.done", "usage": usage}]
    return sound, content_type


def _samples(said: str, count: int) -> bytes:
    """`count` bytes of the speech of `said`, with noise drawn anew on each call."""
    noise = secrets.token_bytes(8)
    out = bytearray()
    block = 0
    while len(out) < count:
        out += hashlib.sha256(said.encode() + noise + block.to_bytes(4, "big")).digest()
        block += 1
    return bytes(out[:count])


def _wav(samples: bytes) -> bytes:
    """A RIFF WAVE file of 8 kHz mono 8-bit `samples`."""
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 8000, 1, 8)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(samples)) + samples
    return b"RIFF" + struct.pack("<I", len(body)) + body
