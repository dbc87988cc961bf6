"""Canonical form of a request body and the cache key derived from it (pure, no I/O).

Two bodies that mean the same thing must produce the same key: key order, whitespace and number
spelling vanish in the canonical bytes, and parameters given at their documented default (or as
null) are left out of the key. What the upstream receives keeps every parameter the client sent,
only respelled, because some models reject parameters they were not sent.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

from proxy.core.routes import CHAT as CHAT
from proxy.core.routes import COMPACT as COMPACT
from proxy.core.routes import COMPLETIONS as COMPLETIONS
from proxy.core.routes import DEFAULT_MODELS, kind
from proxy.core.routes import EMBEDDINGS as EMBEDDINGS
from proxy.core.routes import IMAGE_EDITS as IMAGE_EDITS
from proxy.core.routes import IMAGE_VARIATIONS as IMAGE_VARIATIONS
from proxy.core.routes import IMAGES as IMAGES
from proxy.core.routes import INPUT_TOKENS as INPUT_TOKENS
from proxy.core.routes import MODERATIONS as MODERATIONS
from proxy.core.routes import RESPONSES as RESPONSES
from proxy.core.routes import SPEECH as SPEECH
from proxy.core.routes import TRANSCRIPTIONS as TRANSCRIPTIONS
from proxy.core.routes import TRANSLATIONS as TRANSLATIONS
from proxy.errors import InvalidJSON

MAX_DEPTH = 128
KEY_VERSION = 1
_LOWEST_INT, _HIGHEST_INT = -(2**63), 2**64 - 1
"""An integer-valued double in this range (64 bits, what orjson writes) is respelled as the
integer it is exactly: 1e16 is 10000000000000000. Beyond it a double stays one, its integer too
long for an upstream's integer types."""

CACHEABLE_ROUTES = frozenset(
    {CHAT, COMPLETIONS, EMBEDDINGS, IMAGES, MODERATIONS, RESPONSES, SPEECH}
    | {TRANSCRIPTIONS, TRANSLATIONS, IMAGE_EDITS, IMAGE_VARIATIONS, COMPACT, INPUT_TOKENS}
)

_SAMPLING_DEFAULTS: dict[str, Any] = {
    "temperature": 1,
    "top_p": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "stream": False,
}

# Documented defaults per route: a parameter sent at this value means the same as leaving it out.
DEFAULTS: dict[str, dict[str, Any]] = {
    CHAT: {
        **_SAMPLING_DEFAULTS,
        "logprobs": False,
        "parallel_tool_calls": True,
        "response_format": {"type": "text"},
        "store": False,
        "metadata": {},
    },
    # Not `n` on chat: newer models refuse it explicit, even 1, where they answer it left out;
    # keyed alike, a HIT would answer the request the upstream refuses.
    # Not `logprobs`: here an integer (0 returns the chosen token's) whose default is null, and
    # an upstream that reads `false` as 0 answers with log probabilities.
    COMPLETIONS: {**_SAMPLING_DEFAULTS, "n": 1, "echo": False, "best_of": 1},
    EMBEDDINGS: {"encoding_format": "float"},
    MODERATIONS: {"model": DEFAULT_MODELS[MODERATIONS]},
    IMAGES: {"n": 1},
    IMAGE_EDITS: {"n": 1},
    IMAGE_VARIATIONS: {"n": 1},
    SPEECH: {"response_format": "mp3", "speed": 1, "stream_format": "audio"},
    # A form's fields are text: these are the values as sent (`temperature` is read as a number).
    TRANSCRIPTIONS: {"response_format": "json", "temperature": 0, "stream": "false"},
    TRANSLATIONS: {"response_format": "json", "temperature": 0},
    RESPONSES: {
        "temperature": 1,
        "top_p": 1,
        "stream": False,
        "background": False,
        "parallel_tool_calls": True,
        "truncation": "disabled",
        "tool_choice": "auto",
        "text": {"format": {"type": "text"}},
        "store": True,
        "metadata": {},
    },
}

# Fields that label a request for the provider's bookkeeping and cannot change the output, nor
# come back in the answer: `user`, and what replaces it (`safety_identifier`, an end user's id
# for abuse detection; `prompt_cache_key`, `prompt_cache_retention` and `prompt_cache_options`,
# hints to the provider's own prompt cache). Keyed, an app following the provider's advice to
# send one per end user would cache per end user.
# `metadata` is not one: a chat completion echoes it (as a response object does), so an answer
# served to other metadata would hand over another caller's (in `shared` scope, another
# tenant's). Nor is `store`: a stored answer's id is fetched (`GET /v1/responses/{id}`, stored
# chat completions) or chained (`previous_response_id`) later, which only works when the
# upstream kept it; an answer made with `store: false` must not answer a request that asked to
# keep it. On the Responses API, whose answer echoes `user`, `safety_identifier` and
# `prompt_cache_key` too, every field is keyed; so on its compaction, which echoes
# `safety_identifier`.
NON_SEMANTIC = frozenset(
    {
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
    }
)
_LABELS: dict[str, frozenset[str]] = {RESPONSES: frozenset(), COMPACT: frozenset()}


def parse_body(raw: bytes) -> dict[str, Any]:
    """Parse a request body strictly: one JSON object, finite numbers, bounded nesting.

    The result is already `normalize`d (one walk both bounds the depth and respells numbers),
    so `keyed` can serialize it without walking it again.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidJSON("The request body must be a JSON object.")
    checked: dict[str, Any] = _checked(value, 1)
    return checked


_UNCHANGED = frozenset({str, int, bool, type(None)})
"""What parsed JSON holds besides containers and floats: nothing to respell, nothing to walk."""


def _checked(value: Any, level: int) -> Any:
    """`normalize`, refusing containers nested deeper than MAX_DEPTH. Strings and integers,
    most of a body, are taken as they are, without a call each."""
    if isinstance(value, dict):
        if level > MAX_DEPTH:
            raise InvalidJSON(f"The request body nests deeper than {MAX_DEPTH} levels.")
        return {k: v if type(v) in _UNCHANGED else _checked(v, level + 1) for k, v in value.items()}
    if isinstance(value, list):
        if level > MAX_DEPTH:
            raise InvalidJSON(f"The request body nests deeper than {MAX_DEPTH} levels.")
        return [v if type(v) in _UNCHANGED else _checked(v, level + 1) for v in value]
    if isinstance(value, float) and value.is_integer() and _LOWEST_INT <= value <= _HIGHEST_INT:
        return int(value)
    return value


def reject_ambiguous(raw: bytes) -> None:
    """Refuse a body that other parsers could read otherwise than the key does: one naming a
    key twice (parsers disagree on which copy wins), or holding an integer beyond 64 bits
    (`parse_body` reads it as the nearest double, so 2^64 and 2^64 + 1 share a key, where the
    upstream may read each exactly). Only bodies forwarded as is (`--enforce off`) need it:
    respelled ones reach the upstream in our own serialization. Call after `parse_body`,
    which bounds depth."""
    json.loads(raw, object_pairs_hook=_unique_object, parse_int=_int_within_range)


def _int_within_range(digits: str) -> int:
    """The integer, or InvalidJSON; never converts more than 21 digits (Python refuses over
    4,300 with a ValueError of its own)."""
    if len(digits) <= 21:
        value = int(digits)
        if _LOWEST_INT <= value <= _HIGHEST_INT:
            return value
    shown = digits if len(digits) <= 24 else digits[:24] + "…"
    raise InvalidJSON(
        f"The request body holds the integer {shown}, beyond 64 bits: forwarded as is "
        "(--enforce off), it would not mean what its cache key means."
    )


class DuplicateKey(InvalidJSON):
    """A JSON object naming a key twice; `name` is the key, for a caller to word its own error."""

    def __init__(self, name: str) -> None:
        super().__init__(f"The request body names the key {name!r} more than once.")
        self.name = name


def reject_duplicate_keys(raw: bytes | str) -> None:
    """Raise DuplicateKey if any object in the JSON text, at any depth, names a key twice:
    orjson keeps the last copy where a human reading the text sees the first. The text must be
    JSON that orjson has read already (this parser accepts NaN and any depth otherwise)."""
    json.loads(raw, object_pairs_hook=_unique_object)


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise DuplicateKey(name)
        obj[name] = value
    return obj


def normalize(value: Any) -> Any:
    """Respell numbers so that 1, 1.0 and 1e0 become one value; everything else is unchanged."""
    if isinstance(value, float):
        if value.is_integer() and _LOWEST_INT <= value <= _HIGHEST_INT:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def dumps(value: Any) -> bytes:
    """Canonical bytes: sorted keys, no whitespace, normalized numbers."""
    return orjson.dumps(normalize(value), option=orjson.OPT_SORT_KEYS)


def compact(data: bytes) -> bytes:
    """`data` in an object of its own size, for bytes kept long (a loaded cassette's requests,
    a remembered call's bodies): orjson's output keeps the buffer it was written in, 4 KiB
    for a 150-byte request, which a store's or a memo's count of bytes never sees."""
    return bytes(memoryview(data))


def key_view(route: str, body: dict[str, Any]) -> dict[str, Any]:
    """The part of a body that decides the answer: defaults, nulls and labels left out.
    An Azure route keys with the defaults of the OpenAI route it stands for."""
    counterpart = kind(route)
    defaults = DEFAULTS.get(counterpart, {})
    labels = _LABELS.get(counterpart, NON_SEMANTIC)
    view = {}
    for name, value in body.items():
        if value is None or name in labels:
            continue
        if name in defaults and _same(normalize(value), defaults[name]):
            continue
        view[name] = value
    if view.get("stream") is not True:
        view.pop("stream_options", None)
    return view


def _same(value: Any, default: Any) -> bool:
    """Equality that keeps JSON's true apart from 1 and false apart from 0."""
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    return bool(value == default)


def request_key(
    route: str, scope: str, namespace: str, body: dict[str, Any], query: str = "", vary: str = ""
) -> str:
    """The cache key: a hex SHA-256 of everything that can change the answer. `vary` is the
    digest of the request's keyed headers (`proxy.core.keyed.digest`), "" for none."""
    return _key(route, scope, namespace, dumps(key_view(route, body)), query, vary)


def keyed(
    route: str, scope: str, namespace: str, body: dict[str, Any], query: str = "", vary: str = ""
) -> tuple[str, bytes]:
    """`request_key` and `dumps` of a body from `parse_body` (normalized already), with one
    serialization for both when the key view is the whole body: no defaults, nulls or labels."""
    whole = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    view = key_view(route, body)
    seen = whole if len(view) == len(body) else orjson.dumps(view, option=orjson.OPT_SORT_KEYS)
    return _key(route, scope, namespace, seen, query, vary), whole


def _key(route: str, scope: str, namespace: str, view: bytes, query: str, vary: str) -> str:
    """SHA-256 of the canonical bytes of {v, route, query, scope, namespace, body: view} (and
    `vary` when a request has keyed headers: without, the key stays what it always was): with
    sorted keys "body" comes first, so the view's bytes are spliced in, not serialized again."""
    rest = {
        "namespace": namespace,
        "query": query,
        "route": route,
        "scope": scope,
        "v": KEY_VERSION,
    }
    if vary:
        rest["vary"] = vary
    tail = orjson.dumps(rest, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(b'{"body":' + view + b"," + tail[1:]).hexdigest()
