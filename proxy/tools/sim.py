"""Simulated OpenAI-compatible upstream (`repro-proxy sim`) for demos, load tests and e2e tests.

It answers like the real API (bodies, SSE frames, seeded determinism tied to the
system_fingerprint) so the proxy can be exercised offline, and lets tests steer it at run time
through unauthenticated /_sim/* routes: fingerprint rotation, queued faults, runtime latency,
recorded requests and stream statistics. All mutable state lives in one `SimState` on the app.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import math
import random
import secrets
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

JSON = dict[str, Any]
Reply = JSON | list[JSON]  # a list holds the chunks of a streamed answer

_VOCAB = (
    "the", "a", "of", "answer", "model", "token", "seed", "cache", "proxy", "stable", "river",
    "mountain", "quiet", "bright", "signal", "garden", "window", "silver", "paper", "orbit",
    "lantern", "harbor", "meadow", "copper", "echo", "forest", "thunder", "velvet", "crystal",
    "ember", "canyon", "glacier", "pixel", "vector", "kernel", "prism", "beacon", "compass",
    "falcon", "willow", "marble", "saffron", "cobalt", "maple", "tide", "dune", "summit",
    "is", "was", "will", "can", "under", "over", "through", "beside", "and", "but", "then",
)  # fmt: skip
_VOLATILE = frozenset({"stream", "stream_options", "user"})
_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo-instruct", "text-embedding-3-small")
_FAULT_KINDS = frozenset({"status", "cut", "error_event", "hang", "drop"})
_IMMEDIATE_FAULTS = frozenset({"status", "hang", "drop"})
_TUNABLES = ("latency", "chunk_delay", "divergence")
_HANG_LIMIT = 3600.0
_RECORD_LIMIT = 1000
_MAX_BODY = 64 * 1024 * 1024
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_DONE = b"data: [DONE]\n\n"


def _check_tunable(name: str, value: object) -> float:
    """Validate a latency/chunk_delay/divergence value, naming the setting in the error."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < 0 or (name == "divergence" and value > 1):
        bound = "between 0 and 1" if name == "divergence" else "non-negative"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class SimSettings:
    """Start-up configuration; tests change the tunables later through /_sim/settings."""

    host: str = "127.0.0.1"
    port: int = 8090
    fingerprint: str | None = "fp_sim_0001"
    latency: float = 0.0
    chunk_delay: float = 0.0
    api_keys: tuple[str, ...] = ()
    divergence: float = 0.0

    def __post_init__(self) -> None:
        for name in _TUNABLES:
            _check_tunable(name, getattr(self, name))


class _BadRequest(Exception):
    """A request the real API would refuse with 400; carries the offending parameter."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_param(data: JSON, name: str, default: int, lo: int, hi: int | None = None) -> int:
    """An integer parameter within bounds (null means default), else a 400 naming it."""
    value = data.get(name)
    if value is None:
        return default
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        upper = "" if hi is None else f" and at most {hi}"
        raise _BadRequest(f"{name} must be an integer of at least {lo}{upper}", name)
    return value


@dataclass(slots=True)
class Fault:
    """One queued misbehaviour, applied to the next `remaining` LLM requests."""

    kind: str
    remaining: int
    status: int
    headers: dict[str, str]
    body: Any
    after: int

    @classmethod
    def from_json(cls, data: JSON) -> Fault:
        """Validate a POST /_sim/faults body; mistakes answer 400 naming the field."""
        kind = data.get("kind")
        if kind not in _FAULT_KINDS:
            raise _BadRequest(f"kind must be one of {sorted(_FAULT_KINDS)}", "kind")
        headers = data.get("headers") or {}
        if not isinstance(headers, dict):
            raise _BadRequest("headers must be an object", "headers")
        return cls(
            kind=kind,
            remaining=_int_param(data, "count", 1, lo=1),
            status=_int_param(data, "status", 500, lo=100, hi=599),
            headers={str(k): str(v) for k, v in headers.items()},
            body=data.get("body"),
            after=_int_param(data, "after", 2, lo=0),
        )


@dataclass(slots=True)
class SimState:
    """Everything that changes while the simulator runs, shared by its handlers via the app."""

    fingerprint: str | None
    latency: float
    chunk_delay: float
    divergence: float
    api_keys: frozenset[str]
    faults: deque[Fault] = field(default_factory=deque)
    requests: deque[JSON] = field(default_factory=lambda: deque(maxlen=_RECORD_LIMIT))
    hits: Counter[str] = field(default_factory=Counter)
    streams_completed: int = 0
    streams_cancelled: int = 0

    @classmethod
    def from_settings(cls, settings: SimSettings) -> SimState:
        return cls(
            fingerprint=settings.fingerprint,
            latency=settings.latency,
            chunk_delay=settings.chunk_delay,
            divergence=settings.divergence,
            api_keys=frozenset(settings.api_keys),
        )

    def next_fault(self) -> Fault | None:
        """Take one use of the oldest queued fault (FIFO), dropping it once used up."""
        if not self.faults:
            return None
        fault = self.faults[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            self.faults.popleft()
        return fault


STATE = web.AppKey("sim_state", SimState)


# --- generation (pure) -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    """One choice: its streamed pieces (words or tool-call argument fragments) and its end."""

    pieces: tuple[str, ...]
    finish_reason: str
    tool: str | None = None
    call_id: str = ""

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _text_rng(body: JSON, fingerprint: str | None, divergence: float) -> random.Random:
    """Seeded requests get text fixed by body and fingerprint, like the real service (mostly)."""
    if not _is_int(body.get("seed")) or random.random() < divergence:
        return random.Random(secrets.randbits(64))
    stable = {k: v for k, v in body.items() if k not in _VOLATILE}
    material = orjson.dumps(stable, option=orjson.OPT_SORT_KEYS) + (fingerprint or "").encode()
    return random.Random(hashlib.sha256(material).digest())


def _sentence(rng: random.Random, limit: int | None) -> _Answer:
    """12-30 words, one token each; a max_tokens cap cuts it short with finish_reason length."""
    count = rng.randint(12, 30)
    size = count if limit is None else min(limit, count)
    words = [rng.choice(_VOCAB) for _ in range(size)]
    if words:
        words[0] = words[0].capitalize()
    pieces = [w + " " for w in words[:-1]] + [w + "." for w in words[-1:]]
    return _Answer(tuple(pieces), "length" if size < count else "stop")


def _max_tokens(body: JSON) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            return _int_param(body, name, 0, lo=1)
    return None


def _forced_function(body: JSON) -> JSON | None:
    """The function a request forces via tool_choice; "auto" and "none" get prose."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not isinstance(tools, list):
        return None
    functions = [t.get("function") for t in tools if isinstance(t, dict)]
    named = [f for f in functions if isinstance(f, dict) and isinstance(f.get("name"), str)]
    if choice == "required" and named:
        return named[0]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        wanted = choice["function"].get("name")
        return next((f for f in named if f["name"] == wanted), None)
    return None


def _schema_value(spec: object, rng: random.Random) -> object:
    """A plausible value for one JSON-schema property, so clients can parse the arguments."""
    if not isinstance(spec, dict):
        return rng.choice(_VOCAB)
    if isinstance(spec.get("enum"), list) and spec["enum"]:
        return rng.choice(spec["enum"])
    kind = spec.get("type")
    if kind in ("integer", "number"):
        return rng.randint(0, 100)
    if kind == "boolean":
        return rng.random() < 0.5
    return " ".join(rng.choices(_VOCAB, k=2))


def _tool_call(function: JSON, rng: random.Random) -> _Answer:
    params = function.get("parameters")
    props = params.get("properties") if isinstance(params, dict) else None
    args = {k: _schema_value(v, rng) for k, v in props.items()} if isinstance(props, dict) else {}
    text = orjson.dumps(args).decode()
    pieces = tuple(text[i : i + 8] for i in range(0, len(text), 8))
    call_id = "call_" + secrets.token_hex(12)
    return _Answer(pieces, "tool_calls", tool=function["name"], call_id=call_id)


def _word_count(value: object) -> int:
    """Prompt size in simulated tokens: words of every string, one per token id."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_word_count(v) for v in value)
    if isinstance(value, dict):
        return sum(_word_count(v) for v in value.values())
    return 1 if _is_int(value) else 0


def _usage(prompt_tokens: int, answers: list[_Answer]) -> JSON:
    completion = sum(len(a.pieces) for a in answers)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def _head(prefix: str, kind: str, body: JSON, state: SimState) -> JSON:
    return {
        "id": f"{prefix}-{secrets.token_hex(14)}",
        "object": kind,
        "created": int(time.time()),
        "model": body.get("model"),
        "system_fingerprint": state.fingerprint,
    }


def _wants_stream(body: JSON) -> bool:
    return body.get("stream") is True


def _include_usage(body: JSON) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _chunks(head: JSON, choices: Iterator[JSON], usage: JSON, include_usage: bool) -> list[JSON]:
    """Wrap choice deltas in envelopes sharing id/created/fingerprint, plus the usage chunk."""
    extra = {"usage": None} if include_usage else {}
    chunks = [{**head, "choices": [choice], **extra} for choice in choices]
    if include_usage:
        chunks.append({**head, "choices": [], "usage": usage})
    return chunks


def _chat_choice(index: int, answer: _Answer) -> JSON:
    message: JSON = {"role": "assistant", "content": answer.text, "refusal": None}
    if answer.tool is not None:
        function = {"name": answer.tool, "arguments": answer.text}
        call = {"id": answer.call_id, "type": "function", "function": function}
        message = {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}
    reason = answer.finish_reason
    return {"index": index, "message": message, "logprobs": None, "finish_reason": reason}


def _chat_deltas(answer: _Answer) -> Iterator[JSON]:
    """One choice's deltas as OpenAI streams them: the role first, then the pieces."""
    if answer.tool is None:
        yield {"role": "assistant", "content": ""}
        yield from ({"content": piece} for piece in answer.pieces)
        return
    function = {"name": answer.tool, "arguments": ""}
    call = {"index": 0, "id": answer.call_id, "type": "function", "function": function}
    yield {"role": "assistant", "content": None, "tool_calls": [call]}
    for piece in answer.pieces:
        yield {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}


def _chat_choices(answers: list[_Answer]) -> Iterator[JSON]:
    for index, answer in enumerate(answers):
        for delta in _chat_deltas(answer):
            yield {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
        yield {"index": index, "delta": {}, "logprobs": None, "finish_reason": answer.finish_reason}


def _text_choices(answers: list[_Answer]) -> Iterator[JSON]:
    for index, answer in enumerate(answers):
        for piece in answer.pieces:
            yield {"text": piece, "index": index, "logprobs": None, "finish_reason": None}
        yield {"text": "", "index": index, "logprobs": None, "finish_reason": answer.finish_reason}


def _chat_reply(body: JSON, state: SimState) -> Reply:
    if not isinstance(body.get("messages"), list):
        raise _BadRequest("messages is a required array", "messages")
    n, limit = _int_param(body, "n", 1, lo=1, hi=128), _max_tokens(body)
    rng = _text_rng(body, state.fingerprint, state.divergence)
    function = _forced_function(body)
    if function is None:
        answers = [_sentence(rng, limit) for _ in range(n)]
    else:
        answers = [_tool_call(function, rng) for _ in range(n)]
    head = _head("chatcmpl", "chat.completion", body, state)
    usage = _usage(_word_count(body["messages"]), answers)
    if _wants_stream(body):
        head["object"] = "chat.completion.chunk"
        return _chunks(head, _chat_choices(answers), usage, _include_usage(body))
    choices = [_chat_choice(i, a) for i, a in enumerate(answers)]
    return {**head, "choices": choices, "usage": usage}


def _prompts(body: JSON) -> list[Any]:
    """A prompt is a string, token ids, or a list of either; a list of prompts fans out."""
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        return prompt
    return [prompt]


def _text_reply(body: JSON, state: SimState) -> Reply:
    prompts = _prompts(body)
    n, limit = _int_param(body, "n", 1, lo=1, hi=128), _max_tokens(body)
    rng = _text_rng(body, state.fingerprint, state.divergence)
    answers = [_sentence(rng, limit) for _ in prompts for _ in range(n)]
    head = _head("cmpl", "text_completion", body, state)
    usage = _usage(_word_count(prompts), answers)
    if _wants_stream(body):
        return _chunks(head, _text_choices(answers), usage, _include_usage(body))
    choices = [
        {"text": a.text, "index": i, "logprobs": None, "finish_reason": a.finish_reason}
        for i, a in enumerate(answers)
    ]
    return {**head, "choices": choices, "usage": usage}


def _vector(item: object, dims: int) -> list[float]:
    """A unit vector fixed by the input alone: embeddings take no seed."""
    material = item.encode() if isinstance(item, str) else orjson.dumps(item)
    rng = random.Random(hashlib.sha256(material).digest())
    raw = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def _embedding_inputs(body: JSON) -> list[Any]:
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        return value if isinstance(value[0], str | list) else [value]
    raise _BadRequest("input must be a string or a non-empty array", "input")


def _embeddings_reply(body: JSON, state: SimState) -> Reply:
    inputs = _embedding_inputs(body)
    dims = _int_param(body, "dimensions", 16, lo=1, hi=4096)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise _BadRequest("encoding_format must be float or base64", "encoding_format")
    data = []
    for index, item in enumerate(inputs):
        vector: Any = _vector(item, dims)
        if encoding == "base64":
            vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = _word_count(inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": body.get("model"), "usage": usage}


# --- HTTP ------------------------------------------------------------------------------------


def _json(
    payload: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    merged = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(body=orjson.dumps(payload), status=status, headers=merged)


def _error_body(message: str, kind: str, code: str | None, param: str | None = None) -> JSON:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> web.Response:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return _json(_error_body(message, kind, code, param), status=status)


def _parse_object(raw: bytes) -> JSON:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _BadRequest(f"We could not parse the JSON body of your request: {exc}") from exc
    if not isinstance(data, dict):
        raise _BadRequest("The request body must be a JSON object.")
    return data


async def _pause(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def _close(request: web.Request) -> None:
    """Close the connection under the response, as a crashing or overloaded upstream does."""
    if request.transport is not None:
        request.transport.close()


async def _recorded(request: web.Request) -> JSON:
    """The request as received: raw header names and the exact body bytes (base64 if binary)."""
    raw = await request.read()
    headers: dict[str, str] = {}
    for name_bytes, value_bytes in request.raw_headers:
        name, value = name_bytes.decode("latin-1"), value_bytes.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    try:
        body, encoded = raw.decode(), False
    except UnicodeDecodeError:
        body, encoded = base64.b64encode(raw).decode(), True
    return {
        "method": request.method,
        "path": request.path,
        "query": request.rel_url.raw_query_string,
        "headers": headers,
        "body": body,
        "body_base64": encoded,
    }


def _authorized(request: web.Request, keys: frozenset[str]) -> bool:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    return scheme.lower() == "bearer" and bool(key) and (not keys or key in keys)


@web.middleware
async def _v1_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record, count and authenticate every /v1 request; router errors in OpenAI's shape."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    state = request.app[STATE]
    state.requests.append(await _recorded(request))
    state.hits[request.path] += 1
    if not _authorized(request, state.api_keys):
        return _error(401, "Incorrect API key provided.", code="invalid_api_key")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return _error(exc.status, f"Invalid URL ({request.method} {request.path})")


@web.middleware
async def _bad_request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _BadRequest as exc:
        return _error(400, exc.message, param=exc.param)


async def _immediate_fault(request: web.Request, fault: Fault) -> web.StreamResponse:
    """Faults that replace the whole answer: an error status, a hang, or a dropped socket."""
    if fault.kind == "status":
        default = _error_body(f"Simulated error {fault.status}.", "server_error", None)
        body = default if fault.body is None else fault.body
        return _json(body, status=fault.status, headers=fault.headers)
    if fault.kind == "hang":
        await asyncio.sleep(_HANG_LIMIT)  # cancelled when the client goes away
        return _error(504, "Simulated hang ended.")
    _close(request)
    return web.Response()


async def _truncated(request: web.Request, data: bytes) -> web.StreamResponse:
    """Half of a JSON body announced in full, then a closed connection."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    _close(request)
    return response


def _frame(payload: JSON) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _end_stream(
    request: web.Request, response: web.StreamResponse, fault: Fault | None, state: SimState
) -> None:
    if fault is None:
        await response.write(_DONE)
        await response.write_eof()
        state.streams_completed += 1
    elif fault.kind == "cut":
        _close(request)
    else:
        error = _error_body("The server had an error while streaming.", "server_error", None)
        await response.write(_frame(error))
        await response.write_eof()


async def _stream(
    request: web.Request, state: SimState, chunks: list[JSON], fault: Fault | None
) -> web.StreamResponse:
    """Send each chunk as it is produced; a client leaving early counts as a cancelled stream."""
    response = web.StreamResponse(headers=_SSE_HEADERS)
    stop = len(chunks) if fault is None else fault.after
    try:
        await response.prepare(request)
        for index, chunk in enumerate(chunks[:stop]):
            if index:
                await _pause(state.chunk_delay)
            await response.write(_frame(chunk))
        await _end_stream(request, response, fault, state)
    except ConnectionResetError:
        state.streams_cancelled += 1
    except asyncio.CancelledError:
        state.streams_cancelled += 1
        raise
    return response


async def _answer(request: web.Request, payload: JSON, fault: Fault | None) -> web.StreamResponse:
    if fault is None:
        return _json(payload)
    if fault.kind == "cut":
        return await _truncated(request, orjson.dumps(payload))
    return _error(500, "The server had an error while processing your request.")


async def _serve_llm(
    request: web.Request, build: Callable[[JSON, SimState], Reply]
) -> web.StreamResponse:
    """The flow shared by the LLM routes: fault, validation, latency, then the answer."""
    state = request.app[STATE]
    fault = state.next_fault()
    if fault is not None and fault.kind in _IMMEDIATE_FAULTS:
        if fault.kind == "status":  # an error is an answer too: as slow as the others
            await _pause(state.latency)
        return await _immediate_fault(request, fault)
    reply = build(_parse_object(await request.read()), state)
    await _pause(state.latency)
    if isinstance(reply, list):
        return await _stream(request, state, reply, fault)
    return await _answer(request, reply, fault)


def _llm_route(build: Callable[[JSON, SimState], Reply]) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await _serve_llm(request, build)

    return handle


async def _models(request: web.Request) -> web.Response:
    data = [
        {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "system"}
        for model in _MODELS
    ]
    return _json({"object": "list", "data": data})


async def _files(request: web.Request) -> web.Response:
    """Echo what arrived, so tests can check that uploads pass through the proxy intact."""
    raw = await request.read()
    return _json(
        {
            "id": "file-" + secrets.token_hex(12),
            "object": "file",
            "bytes": len(raw),
            "content_type": request.headers.get("Content-Type", ""),
        }
    )


# --- control routes --------------------------------------------------------------------------


async def _get_fingerprint(request: web.Request) -> web.Response:
    return _json({"fingerprint": request.app[STATE].fingerprint})


async def _set_fingerprint(request: web.Request) -> web.Response:
    data = _parse_object(await request.read())
    value = data.get("fingerprint")
    if "fingerprint" not in data or not (value is None or isinstance(value, str)):
        raise _BadRequest("fingerprint must be a string or null", "fingerprint")
    request.app[STATE].fingerprint = value
    return _json({"fingerprint": value})


def _tunables(state: SimState) -> JSON:
    return {name: getattr(state, name) for name in _TUNABLES}


async def _get_settings(request: web.Request) -> web.Response:
    return _json(_tunables(request.app[STATE]))


async def _set_settings(request: web.Request) -> web.Response:
    """Change latency, chunk_delay or divergence at run time; all or nothing."""
    state, data = request.app[STATE], _parse_object(await request.read())
    try:
        updates = {name: _check_tunable(name, data[name]) for name in _TUNABLES if name in data}
    except ValueError as exc:
        raise _BadRequest(str(exc)) from exc
    for name, value in updates.items():
        setattr(state, name, value)
    return _json(_tunables(state))


async def _set_keys(request: web.Request) -> web.Response:
    """Replace the accepted API keys at run time (an empty list accepts any key): revocation."""
    keys = _parse_object(await request.read()).get("api_keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise _BadRequest("'api_keys' must be a list of non-empty strings")
    request.app[STATE].api_keys = frozenset(keys)
    return _json({"api_keys": sorted(keys)})


async def _add_fault(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.faults.append(Fault.from_json(_parse_object(await request.read())))
    return _json({"queued": len(state.faults)})


async def _clear_faults(request: web.Request) -> web.Response:
    request.app[STATE].faults.clear()
    return _json({"queued": 0})


async def _get_requests(request: web.Request) -> web.Response:
    return _json(list(request.app[STATE].requests))


async def _clear_requests(request: web.Request) -> web.Response:
    request.app[STATE].requests.clear()
    return _json([])


async def _stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _json(
        {
            "requests": dict(state.hits),
            "streams_completed": state.streams_completed,
            "streams_cancelled": state.streams_cancelled,
        }
    )


# --- public API ------------------------------------------------------------------------------


def create_sim_app(settings: SimSettings) -> web.Application:
    """Build the simulator; its state lives in app[STATE] so several can run side by side."""
    app = web.Application(
        middlewares=[_v1_middleware, _bad_request_middleware], client_max_size=_MAX_BODY
    )
    app[STATE] = SimState.from_settings(settings)
    app.add_routes(
        [
            web.post("/v1/chat/completions", _llm_route(_chat_reply)),
            web.post("/v1/completions", _llm_route(_text_reply)),
            web.post("/v1/embeddings", _llm_route(_embeddings_reply)),
            web.get("/v1/models", _models),
            web.post("/v1/files", _files),
            web.get("/_sim/fingerprint", _get_fingerprint),
            web.post("/_sim/fingerprint", _set_fingerprint),
            web.get("/_sim/settings", _get_settings),
            web.post("/_sim/settings", _set_settings),
            web.post("/_sim/keys", _set_keys),
            web.post("/_sim/faults", _add_fault),
            web.delete("/_sim/faults", _clear_faults),
            web.get("/_sim/requests", _get_requests),
            web.delete("/_sim/requests", _clear_requests),
            web.get("/_sim/stats", _stats),
        ]
    )
    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `repro-proxy sim`; the CLI owns the parser, this module owns the options."""
    defaults = SimSettings()
    parser.add_argument("--host", default=defaults.host, help="listen address")
    parser.add_argument("--port", type=int, default=defaults.port, help="listen port")
    parser.add_argument(
        "--fingerprint",
        default=defaults.fingerprint,
        help='system_fingerprint to answer with; "null" answers with null',
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before answering")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        default=[],
        help="accepted bearer key (repeatable); none given: any non-empty key",
    )
    parser.add_argument(
        "--divergence",
        type=float,
        default=0.0,
        help="fraction (0..1) of seeded answers that differ anyway, as on the real service",
    )


def settings_from_args(ns: argparse.Namespace) -> SimSettings:
    """Parsed flags to settings; the word "null" stands for a null system_fingerprint."""
    return SimSettings(
        host=ns.host,
        port=ns.port,
        fingerprint=None if ns.fingerprint == "null" else ns.fingerprint,
        latency=ns.latency,
        chunk_delay=ns.chunk_delay,
        api_keys=tuple(ns.api_keys),
        divergence=ns.divergence,
    )


def run_sim(settings: SimSettings) -> None:
    """Serve until SIGINT/SIGTERM, which run_app turns into a graceful, quick shutdown."""
    url = f"http://{settings.host}:{settings.port}"
    web.run_app(
        create_sim_app(settings),
        host=settings.host,
        port=settings.port,
        print=lambda _: print(f"repro-proxy sim listening on {url}", flush=True),
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=1.0,
    )
