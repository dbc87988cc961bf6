"""The simulator's transcriptions and translations (`POST /v1/audio/transcriptions`,
`/v1/audio/translations`): a form upload whose text comes from the file's bytes, with one word
drawn anew per call, so two calls differ as a real model's takes can and a cache is what makes
them alike. As OpenAI's: `json` (the default), `verbose_json` with segments, or `text`, `srt`
and `vtt` as plain text; `stream=true` as `transcript.text.delta` events.
"""

from __future__ import annotations

import hashlib
import secrets

from aiohttp import web

from proxy.tools.sim.generation import VOCAB
from proxy.tools.sim.state import JSON, BadRequest, Said
from proxy.tools.sim.uploads import read_form

FORMATS = ("json", "verbose_json", "text", "srt", "vtt")
TEXT = "text/plain; charset=utf-8"
WORDS = 8
SECONDS_PER_WORD = 0.4


async def transcription(request: web.Request, translate: bool) -> Said:
    fields, files = read_form(await request.read(), request.headers.get("Content-Type", ""))
    heard = b"".join(files.get("file", []))
    model = fields.get("model")
    if not model:
        raise BadRequest("model must be a string", "model")
    chosen = fields.get("response_format", "json")
    if chosen not in FORMATS:
        raise BadRequest("response_format must be one of " + ", ".join(FORMATS), "response_format")
    if not heard:
        raise BadRequest("The audio file must be uploaded, and not empty.", "file")
    text = _heard(heard, translate)
    if fields.get("stream") == "true":
        return [
            *({"type": "transcript.text.delta", "delta": word + " "} for word in text.split()),
            {"type": "transcript.text.done", "text": text},
        ]
    return _answer(text, chosen, model, translate)


def _heard(audio: bytes, translate: bool) -> str:
    """The words of `audio` (fixed by its bytes), and one drawn anew on each call."""
    digest = hashlib.sha256(audio + (b"en" if translate else b"")).digest()
    words = [VOCAB[byte % len(VOCAB)] for byte in digest[:WORDS]]
    words.append(VOCAB[secrets.randbelow(len(VOCAB))])
    return " ".join(words).capitalize() + "."


def _answer(text: str, chosen: str, model: str, translate: bool) -> Said:
    seconds = round(len(text.split()) * SECONDS_PER_WORD, 2)
    if chosen == "text":
        return (text + "\n").encode(), TEXT
    stamp = _stamp(seconds, ",")
    if chosen == "srt":
        return f"1\n00:00:00,000 --> {stamp}\n{text}\n\n".encode(), TEXT
    if chosen == "vtt":
        return f"WEBVTT\n\n00:00:00.000 --> {_stamp(seconds, '.')}\n{text}\n\n".encode(), TEXT
    usage: JSON = {"type": "duration", "seconds": max(1, round(seconds))}
    if model.startswith("gpt-"):
        words = len(text.split())
        usage = {"type": "tokens", "input_tokens": 10 * words, "output_tokens": words}
        usage["total_tokens"] = 11 * words
    if chosen == "json":
        return {"text": text, "usage": usage}
    segment = {"id": 0, "seek": 0, "start": 0.0, "end": seconds, "text": " " + text}
    task = "translate" if translate else "transcribe"
    return {
        "task": task,
        "language": "english",
        "duration": seconds,
        "text": text,
        "segments": [segment],
        "usage": usage,
    }


def _stamp(seconds: float, comma: str) -> str:
    whole = int(seconds)
    millis = round((seconds - whole) * 1000)
    return f"00:00:{whole:02d}{comma}{millis:03d}"
