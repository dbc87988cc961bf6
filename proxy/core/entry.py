"""A stored answer: the exact bytes to send back, and the little a HIT needs beside them (pure).

The body is kept as the upstream sent it (JSON, or the SSE frames of a stream), so a HIT writes
it out without parsing. How an entry is laid out in a store is `proxy.core.codec`'s business.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeGuard

import orjson


class CorruptEntry(ValueError):
    """A stored value that is not an entry; it is treated as absent."""


class Misshapen(CorruptEntry):
    """An entry that is not the answer the request reading it can use (`is_served_as`): written
    before this proxy checked what it stores, or by another writer; treated as absent."""


class Entry(NamedTuple):
    body: bytes
    content_type: str
    fingerprint: str
    stored_at: float
    model: str
    seed: int | None = None
    seed_source: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stream: bool = False
    # What was asked, so that an entry can be exported and keyed again elsewhere (cassettes).
    route: str = ""
    query: str = ""
    namespace: str = ""
    request: bytes = b""  # the body the upstream received, credentials `sealing.sealed`
    vary: str = ""  # the digest of the keyed request headers (`proxy.core.keyed`), never them
    # The upstream's `x-request-id` for the call that made the answer, sent again with each HIT
    # as an HTTP cache sends the stored headers: the SDKs' `_request_id`, which the upstream's
    # support can look up. Empty when it named none, or none `is_request_id` accepts.
    request_id: str = ""


LAST_DATE = 253402300800.0
"""The year 10000: the first time a date cannot name. Stored times are written as dates (the
admin reports, an export's `recorded_at`), and a time past it, or before 1970, is no writer's."""


def is_dated(stamp: float) -> bool:
    return 0 <= stamp < LAST_DATE


def rewritten(value: Any) -> bytes | None:
    """`value`, read from an upstream's or a store's JSON, written as JSON again; None when it
    nests deeper than orjson writes (254 levels, where it reads 1024): written as is, such a
    value raised TypeError, a 500 for every request that met it."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return None


def usage_of(answer: dict[str, Any]) -> tuple[int, int]:
    """Prompt and completion tokens an answer reports, zero where it reports none, or a count
    no counter can add (below zero, beyond 64 bits). The Responses API names them input and
    output tokens."""
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        return 0, 0
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    return (
        prompt if isinstance(prompt, int) and is_count(prompt) else 0,
        completion if isinstance(completion, int) and is_count(completion) else 0,
    )


_FINGERPRINT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+=/-]{0,127}")
_HEADER_VALUE = re.compile(r"[^\x00-\x1f\x7f\ud800-\udfff]{0,8190}")
_ANSWER_FIELDS = ("choices", "data", "output", "results")


def json_object(data: bytes) -> dict[str, Any] | None:
    """`data` parsed, if it is one JSON object; None for anything else."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def fingerprint_of(answer: dict[str, Any], shape: str | None = None) -> str:
    """The answer's system_fingerprint; a null, missing or ill-formed one is called `none`.
    It ends up in headers, metric labels and store fields, so only a short printable token
    counts: anything else from the upstream is not trusted as a name. A moderation answer
    (`shape` VERDICTS) names none, but answers with its model's dated snapshot (asked for
    `omni-moderation-latest`, it is `omni-moderation-2024-09-26`): that names the weights that
    judged, as a fingerprint does, and moves when the alias does."""
    value = answer.get("model" if shape == VERDICTS else "system_fingerprint")
    return value if isinstance(value, str) and is_fingerprint(value) else "none"


def is_fingerprint(value: str) -> bool:
    return _FINGERPRINT.fullmatch(value) is not None


def is_request_id(value: str) -> bool:
    """A request id that may be stored and sent again: a short printable token, as a
    fingerprint must be (OpenAI's are `req_` and 32 hex digits), never what a hostile upstream
    could make a header, a log line or a cassette's field of."""
    return _FINGERPRINT.fullmatch(value) is not None


def request_id_of(headers: Mapping[str, str]) -> str:
    """The upstream's request id among its answer's headers, empty where there is none to keep."""
    value = headers.get("x-request-id", "")
    return value if is_request_id(value) else ""


def is_content_type(value: str) -> bool:
    """A type a stored answer can be labelled with: a header value as an upstream's can be
    (no control character, within the HTTP client's bound on a header), or none; and text:
    a byte that is not UTF-8 reaches the proxy as a lone surrogate, which no entry's JSON can
    hold."""
    return _HEADER_VALUE.fullmatch(value) is not None


def is_count(value: int) -> bool:
    """A token count as a counter can add it: not negative, within 64 bits."""
    return 0 <= value < 2**63


def is_answer(body: dict[str, Any], responses: bool = False) -> bool:
    """Whether a 200 body is an answer (choices, embeddings or image data, moderation results
    or Responses output) rather than an error some gateways send with status 200: only answers
    are stored or teach a fingerprint. On the Responses API only a completed response is one: a
    queued, failed or incomplete one is not the answer a retry would get, nor one naming an
    `error` beside a `completed` status, which has not said which it is. Elsewhere too an
    `error` beside the answer leaves it unsaid, and an answer's choices (data, output, results)
    are a list of objects as the SDK reads them: `"choices": null` or `"data": "x"` stored
    would be replayed to clients that all fail on it."""
    if body.get("error") is not None:
        return False
    if responses:
        return (
            body.get("object") == "response"
            and body.get("status") == "completed"
            and is_objects(body.get("output"))
        )
    present = [body[name] for name in _ANSWER_FIELDS if name in body]
    return bool(present) and all(is_objects(value) for value in present)


def is_objects(value: object) -> TypeGuard[list[dict[str, Any]]]:
    """A JSON array of objects, as an answer's choices, data and output are."""
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


# What a whole answer's items must hold to be stored, by route (`has_shape`): a chat choice
# its message, a completions choice its text, an embeddings item its vector as asked for, a
# moderation result its verdict, a generated image its bytes, a compaction its items; speech
# is audio (`is_audio`), a transcript its text (`transcript_of`), a token count its number
# (`counted`).
MESSAGES = "message"
TEXTS = "text"
FLOATS = "float"
BASE64 = "base64"
VERDICTS = "verdict"
IMAGE_BYTES = "b64_json"
AUDIO = "audio"
TRANSCRIPT = "transcript"
COMPACTED = "response.compaction"
COUNTED = "response.input_tokens"
UNCOMPARED = frozenset({IMAGE_BYTES, AUDIO, COMPACTED, COUNTED})
"""Shapes whose answers hold no text to compare: bytes a model draws or speaks anew each
time, so two answers always differ and no distance between them says drift; a compaction's
summary is encrypted (`encrypted_content`), the rest of it the request's own messages; a
token count holds no text, and a tokenizer counts alike each time."""


def is_audio(body: bytes, content_type: str) -> bool:
    """Whether a 200's body is speech: bytes labelled as audio, never empty. An error some
    gateways send with a 200 is labelled JSON, and stored it would be replayed to every later
    caller as sound."""
    return bool(body) and is_sound_type(content_type)


def is_sound_type(content_type: str) -> bool:
    """A label of sound (`audio/mpeg`, `audio/wav`, raw `audio/pcm`, which has no header to
    check in its bytes), read before the body has come."""
    media = content_type.partition(";")[0].strip().lower()
    return media.startswith("audio/") or media == "application/octet-stream"


def answer_of(body: bytes, is_response: bool, shape: str | None) -> dict[str, Any] | None:
    """`body` parsed, if it is a whole answer as its route's clients read it: an answer
    (`is_answer`) whose items hold what `shape` names (`has_shape`; None: nothing more)."""
    parsed = json_object(body)
    if shape == COUNTED:
        return parsed if parsed is not None and counted(parsed) else None
    if parsed is None or not is_answer(parsed, is_response) or moderation_failed(parsed):
        return None
    return parsed if shape is None or has_shape(parsed, shape) else None


def counted(answer: dict[str, Any]) -> bool:
    """Whether an answer is a token count (`POST /v1/responses/input_tokens`): the one answer
    with no list of items, so `is_answer`, which looks for one, never takes it."""
    tokens = answer.get("input_tokens")
    return (
        answer.get("object") == COUNTED
        and answer.get("error") is None
        and isinstance(tokens, int)
        and not isinstance(tokens, bool)
        and is_count(tokens)
    )


def moderation_failed(answer: dict[str, Any]) -> bool:
    """Whether an answer (a chat completion, a chunk, a response) reports that the moderation
    its request asked for (`moderation`) failed, on the input or the output: an answer, but
    not the one a retry would get, which carries the results; stored, every later caller
    would be told moderation failed for as long as it lives. Not stored, as a response cut
    short is not, and (whole) nothing is learnt from it."""
    moderation = answer.get("moderation")
    return isinstance(moderation, dict) and any(
        isinstance(part, dict) and part.get("type") == "error"
        for part in (moderation.get("input"), moderation.get("output"))
    )


_EXPIRES_AT = re.compile(
    rb'"expires_at"[ \t\r\n]*:[ \t\r\n]*(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)'
)


def expires_at(body: bytes) -> float | None:
    """The earliest `expires_at` a chat answer (whole, or a stream's frames) names, None for
    none: an audio answer's id (`message.audio.id`, a chunk's `delta.audio.id`) is kept
    upstream until then, for the client to name in its next turn. Read from the bytes, not
    parsed: only an object's key is `"expires_at"` unescaped, a string holding it has its
    quotes escaped, and an answer with audio is mostly its base64."""
    if b'"expires_at"' not in body:
        return None
    found = [float(number) for number in _EXPIRES_AT.findall(body)]
    return min(found, default=None)


_NOT_TEXT = frozenset({"text/html", "text/event-stream"})


def transcript_of(body: bytes, content_type: str) -> dict[str, Any] | None:
    """A transcription's or translation's answer, parsed ({} for plain text), if it is one: a
    JSON object with its `text` and no `error` (`json`, `verbose_json`), or non-empty UTF-8
    labelled text (`text`, `srt`, `vtt`). A gateway's error sent with a 200, or an HTML page,
    stored, would be every later caller's transcript; so would events (`text/event-stream`)
    sent to a request for a whole one, which its client cannot read."""
    media = content_type.partition(";")[0].strip().lower()
    if media == "application/json":
        parsed = json_object(body)
        if parsed is None or parsed.get("error") is not None:
            return None
        return parsed if isinstance(parsed.get("text"), str) else None
    if media.startswith("text/") and media not in _NOT_TEXT and body.strip():
        try:
            body.decode()
        except UnicodeDecodeError:
            return None
        return {}
    return None


def is_served_as(entry: Entry, is_response: bool, shape: str | None, stream: bool) -> bool:
    """Whether a stored entry can answer the request reading it: of the kind it asked for (a
    stream, or one whole answer), and a whole one as `answer_of` would store it now. An older
    proxy stored what `answer_of` refuses today (a chat choice without its message), and a
    store has other writers: served, such an entry fails every caller's client for as long as
    it lives. A stream's clean end was checked as it was recorded (`proxy.core.sse`)."""
    if entry.stream != stream:
        return False
    if stream:
        return True
    if shape == AUDIO:
        return is_audio(entry.body, entry.content_type)
    if shape == TRANSCRIPT:
        return transcript_of(entry.body, entry.content_type) is not None
    return answer_of(entry.body, is_response, shape) is not None


def has_shape(answer: dict[str, Any], shape: str) -> bool:
    """Whether an answer's items hold what its route's client reads of them (`shape`): a chat
    choice with `"message": null`, a completions choice without its text, or no choice at all
    (`"choices": []`, where a client reads `choices[0]`), stored would be served to every
    later caller, whose client fails on it, for as long as the entry lives."""
    if shape in (FLOATS, BASE64):
        return has_vectors(answer, shape == BASE64)
    if shape == IMAGE_BYTES:
        return _each(answer.get("data"), _is_image)
    if shape == VERDICTS:
        return _each(answer.get("results"), _is_verdict)
    if shape == COMPACTED:
        return answer.get("object") == COMPACTED and _each(answer.get("output"), bool)
    holds = _is_message if shape == MESSAGES else _is_text
    return _each(answer.get("choices"), holds)


def _is_message(choice: dict[str, Any]) -> bool:
    return isinstance(choice.get("message"), dict)


def _is_text(choice: dict[str, Any]) -> bool:
    return isinstance(choice.get("text"), str)


def has_vectors(answer: dict[str, Any], base64: bool) -> bool:
    """Whether an embeddings answer holds a vector in each of its items, as its request asked
    for them: a list of numbers, or with `encoding_format: base64` base64 of float32s. An
    item's `"embedding": null`, or a string where numbers were asked, stored would be served
    to every later caller, whose client fails on it, for as long as the entry lives."""
    return _each(answer.get("data"), lambda item: _is_vector(item.get("embedding"), base64))


def _each(items: object, holds: Callable[[dict[str, Any]], bool]) -> bool:
    """A non-empty list of objects, each of which `holds`."""
    return is_objects(items) and bool(items) and all(holds(item) for item in items)


def _is_image(item: dict[str, Any]) -> bool:
    return isinstance(item.get("b64_json"), str) and bool(item["b64_json"])


def _is_verdict(item: dict[str, Any]) -> bool:
    return isinstance(item.get("flagged"), bool) and isinstance(item.get("categories"), dict)


def _is_vector(value: object, base64: bool) -> bool:
    if base64:
        if not isinstance(value, str):
            return False
        try:
            raw = binascii.a2b_base64(value, strict_mode=True)
        except binascii.Error:
            return False
        return bool(raw) and len(raw) % 4 == 0
    return (
        isinstance(value, list)
        and bool(value)
        and all(type(number) is float or type(number) is int for number in value)
    )
