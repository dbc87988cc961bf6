"""What an answer says, apart from how it was sent (pure).

Two recordings of the same request differ in ids, timestamps and framing even when the model
said the same thing; a drift report compares only what was said: the text of each choice, tool
calls, embedding vectors, Responses output, a transcript's text, whether it came whole or
streamed. An image or a sound is named by the digest of its bytes: two takes differ or do not,
and no edit distance between their bytes measures by how much.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import orjson

from proxy.core.entry import is_audio
from proxy.core.sse import IMAGES_DONE
from proxy.core.sse_wire import payloads

VOLATILE = frozenset({"id", "created", "created_at", "system_fingerprint", "usage"})
_TEXT_DELTAS = frozenset({"response.output_text.delta", "transcript.text.delta"})


def text(body: bytes, stream: bool, content_type: str = "") -> str:
    """The content of an answer, as one string comparable across recordings; sound (by its
    `content_type`) as its digest.

    The answer is an upstream's or a cassette's bytes: one nested too deeply to flatten (JSON
    allows 1024 levels, serializing 254, Python's own recursion about 1000) is compared as the
    bytes it is, never an error that would stop a diff or a rotations report."""
    if not stream and is_audio(body, content_type):
        return "sound " + _digest(body)
    try:
        return _text(body, stream)
    except (TypeError, ValueError, RecursionError):
        return body.decode(errors="replace")


def _text(body: bytes, stream: bool) -> str:
    if stream:
        return _streamed(body)
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode(errors="replace")
    return _whole(answer) if isinstance(answer, dict) else body.decode(errors="replace")


def _whole(answer: dict[str, Any]) -> str:
    if isinstance(answer.get("choices"), list):
        return "\n".join(
            _choice(choice.get("message") or choice) for choice in _dicts(answer["choices"])
        )
    items = _dicts(answer.get("data"))
    if any("b64_json" in item for item in items):
        return "images " + ", ".join(_image(item) for item in items)
    if isinstance(answer.get("data"), list):
        return orjson.dumps([item.get("embedding") for item in items]).decode()
    said = answer.get("text")
    if isinstance(said, str):  # a transcript: its segments say it again
        return said
    if isinstance(answer.get("output"), list):
        return "\n".join(_output(item) for item in _dicts(answer["output"]))
    kept = {name: value for name, value in answer.items() if name not in VOLATILE}
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS).decode()


def _image(item: dict[str, Any]) -> str:
    """An image's digest, and the prompt its model revised it to (one sent as a URL, which
    is never stored, by its URL)."""
    if "b64_json" not in item:
        return _flat(item.get("url"))
    revised = item.get("revised_prompt")
    shown = f" revised to {_flat(revised)}" if revised is not None else ""
    return _digest(_decoded(item["b64_json"])) + shown


def _decoded(value: Any) -> bytes:
    """Base64's bytes; what is no base64 (an upstream's), as the text it is."""
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        return str(value).encode()


DIGESTED = ("sound sha256:", "images sha256:")
"""How the texts of answers named by their bytes' digests begin."""


def distance(old: str, new: str, measure: Callable[[str, str], float]) -> float:
    """`measure`, a normalized edit distance, between two answers' texts; 1 between two takes
    named by their digests (images, sound) that differ: such takes are alike or wholly other,
    and no count of edits between two digests says by how much."""
    if old == new:
        return 0.0
    if old.startswith(DIGESTED) or new.startswith(DIGESTED):
        return 1.0
    return measure(old, new)


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()[:16]} ({len(data)} bytes)"


def _choice(message: dict[str, Any]) -> str:
    parts = [
        part for part in (message.get("content"), message.get("text")) if isinstance(part, str)
    ]
    for call in _dicts(message.get("tool_calls")):
        function = call.get("function") or {}
        parts.append(f"{_flat(function.get('name'))}({_flat(function.get('arguments'))})")
    return "".join(parts)


def _flat(value: Any) -> str:
    """A string as it is, anything else (an upstream's arguments as an object, not the JSON text
    the API sends) as orjson writes it: the same text on every Python, whose own repr of deep
    nesting fails on 3.11 and not on 3.13."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _output(item: dict[str, Any]) -> str:
    texts = [part.get("text") for part in _dicts(item.get("content"))]
    if any(isinstance(t, str) for t in texts):
        return "".join(t for t in texts if isinstance(t, str))
    kept = {name: value for name, value in item.items() if name not in VOLATILE}
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS).decode()


def _streamed(body: bytes) -> str:
    """The deltas of an SSE stream, joined per choice (chat, completions, Responses, a
    transcript); speech sent as events, by the digest of its sound; images, by their final
    takes' digests (partial ones are drafts of them)."""
    choices: dict[int, list[str]] = defaultdict(list)
    sound = bytearray()
    images: list[str] = []
    for payload in payloads(body):
        if payload.strip() == b"[DONE]":
            continue
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        if isinstance(kind, str) and kind in _TEXT_DELTAS:
            choices[0].append(str(event.get("delta", "")))
        elif kind == "speech.audio.delta":
            sound += _decoded(event.get("audio", ""))
        elif isinstance(kind, str) and kind in IMAGES_DONE:
            images.append(_digest(_decoded(event.get("b64_json", ""))))
        for choice in _dicts(event.get("choices")):
            index = choice.get("index")
            index = index if isinstance(index, int) else 0
            choices[index].append(_delta(choice.get("delta") or choice))
    if sound:
        return "sound " + _digest(bytes(sound))
    if images:
        return "images " + ", ".join(images)
    return "\n".join("".join(choices[index]) for index in sorted(choices))


def _delta(delta: dict[str, Any]) -> str:
    """A chunk's piece: text, or a tool call's name and arguments as they arrive."""
    parts = [part for part in (delta.get("content"), delta.get("text")) if isinstance(part, str)]
    for call in _dicts(delta.get("tool_calls")):
        function = call.get("function") or {}
        parts.extend(_flat(p) for p in (function.get("name"), function.get("arguments")) if p)
    return "".join(parts)


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
