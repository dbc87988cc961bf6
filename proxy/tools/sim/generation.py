"""Answers the simulator generates (pure): chat, text completions and embeddings.

Seeded requests get text fixed by the body and the system_fingerprint, so the proxy's cache and
fingerprint handling can be checked against an upstream that behaves like the real one.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import secrets
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.tools.sim.state import JSON, BadRequest, SimState, int_param, is_int

Reply = JSON | list[JSON]  # a list holds the chunks of a streamed answer

VOCAB = (
    "the", "a", "of", "answer", "model", "token", "seed", "cache", "proxy", "stable", "river",
    "mountain", "quiet", "bright", "signal", "garden", "window", "silver", "paper", "orbit",
    "lantern", "harbor", "meadow", "copper", "echo", "forest", "thunder", "velvet", "crystal",
    "ember", "canyon", "glacier", "pixel", "vector", "kernel", "prism", "beacon", "compass",
    "falcon", "willow", "marble", "saffron", "cobalt", "maple", "tide", "dune", "summit",
    "is", "was", "will", "can", "under", "over", "through", "beside", "and", "but", "then",
)  # fmt: skip
_VOLATILE = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "store",
        "metadata",
    }
)
"""Fields that change nothing the real service writes: its text is the same with them or without."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One choice: its streamed pieces (words or tool-call argument fragments) and its end."""

    pieces: tuple[str, ...]
    finish_reason: str
    tool: str | None = None
    call_id: str = ""

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _text_rng(body: JSON, fingerprint: str | None, state: SimState) -> random.Random:
    """Seeded requests get text fixed by body and fingerprint, like the real service (mostly).
    With `drift` below 1, only that share of requests (fixed per body) answer differently under
    another fingerprint: a rotation that changes some answers, not all."""
    if not is_int(body.get("seed")) or random.random() < state.divergence:
        return random.Random(secrets.randbits(64))
    stable = {k: v for k, v in body.items() if k not in _VOLATILE}
    material = orjson.dumps(stable, option=orjson.OPT_SORT_KEYS)
    if drifts(material, state.drift):
        material += (fingerprint or "").encode()
    return random.Random(hashlib.sha256(material).digest())


def drifts(material: bytes, drift: float) -> bool:
    """Whether a request's answer depends on the fingerprint: a share `drift` of requests do."""
    draw = int.from_bytes(hashlib.sha256(b"drift" + material).digest()[:8], "big") / 2**64
    return draw < drift


def sentence(rng: random.Random, limit: int | None) -> Answer:
    """12-30 words, one token each; a max_tokens cap cuts it short with finish_reason length."""
    count = rng.randint(12, 30)
    size = count if limit is None else min(limit, count)
    words = [rng.choice(VOCAB) for _ in range(size)]
    if words:
        words[0] = words[0].capitalize()
    pieces = [w + " " for w in words[:-1]] + [w + "." for w in words[-1:]]
    return Answer(tuple(pieces), "length" if size < count else "stop")


def max_tokens(body: JSON, *names: str) -> int | None:
    """The cap on generated tokens, from the first of `names` the body sets."""
    for name in names or ("max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            return int_param(body, name, 0, lo=1)
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
        return rng.choice(VOCAB)
    if isinstance(spec.get("enum"), list) and spec["enum"]:
        return rng.choice(spec["enum"])
    kind = spec.get("type")
    if kind in ("integer", "number"):
        return rng.randint(0, 100)
    if kind == "boolean":
        return rng.random() < 0.5
    return " ".join(rng.choices(VOCAB, k=2))


def tool_call(function: JSON, rng: random.Random) -> Answer:
    params = function.get("parameters")
    props = params.get("properties") if isinstance(params, dict) else None
    args = {k: _schema_value(v, rng) for k, v in props.items()} if isinstance(props, dict) else {}
    text = orjson.dumps(args).decode()
    pieces = tuple(text[i : i + 8] for i in range(0, len(text), 8))
    call_id = "call_" + secrets.token_hex(12)
    return Answer(pieces, "tool_calls", tool=function["name"], call_id=call_id)


def word_count(value: object) -> int:
    """Prompt size in simulated tokens: words of every string, one per token id."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(word_count(v) for v in value)
    if isinstance(value, dict):
        return sum(word_count(v) for v in value.values())
    return 1 if is_int(value) else 0


def _usage(prompt_tokens: int, answers: list[Answer]) -> JSON:
    completion = sum(len(a.pieces) for a in answers)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def _head(prefix: str, kind: str, body: JSON, fingerprint: str | None) -> JSON:
    return {
        "id": f"{prefix}-{secrets.token_hex(14)}",
        "object": kind,
        "created": int(time.time()),
        "model": body.get("model"),
        "system_fingerprint": fingerprint,
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


def _chat_choice(index: int, answer: Answer) -> JSON:
    message: JSON = {"role": "assistant", "content": answer.text, "refusal": None}
    if answer.tool is not None:
        function = {"name": answer.tool, "arguments": answer.text}
        call = {"id": answer.call_id, "type": "function", "function": function}
        message = {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}
    reason = answer.finish_reason
    return {"index": index, "message": message, "logprobs": None, "finish_reason": reason}


def _chat_deltas(answer: Answer) -> Iterator[JSON]:
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


def _chat_choices(answers: list[Answer]) -> Iterator[JSON]:
    for index, answer in enumerate(answers):
        for delta in _chat_deltas(answer):
            yield {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
        yield {"index": index, "delta": {}, "logprobs": None, "finish_reason": answer.finish_reason}


def _text_choices(answers: list[Answer]) -> Iterator[JSON]:
    for index, answer in enumerate(answers):
        for piece in answer.pieces:
            yield {"text": piece, "index": index, "logprobs": None, "finish_reason": None}
        yield {"text": "", "index": index, "logprobs": None, "finish_reason": answer.finish_reason}


def chat_reply(body: JSON, state: SimState) -> Reply:
    if not isinstance(body.get("messages"), list):
        raise BadRequest("messages is a required array", "messages")
    n, limit = int_param(body, "n", 1, lo=1, hi=128), max_tokens(body)
    fingerprint = state.answer_fingerprint()
    rng = _text_rng(body, fingerprint, state)
    function = _forced_function(body)
    if function is None:
        answers = [sentence(rng, limit) for _ in range(n)]
    else:
        answers = [tool_call(function, rng) for _ in range(n)]
    head = _head("chatcmpl", "chat.completion", body, fingerprint)
    usage = _usage(word_count(body["messages"]), answers)
    if _wants_stream(body):
        head["object"] = "chat.completion.chunk"
        return _chunks(head, _chat_choices(answers), usage, _include_usage(body))
    choices = [_chat_choice(i, a) for i, a in enumerate(answers)]
    echoed = {"metadata": body["metadata"]} if body.get("metadata") else {}
    return {**head, "choices": choices, "usage": usage, **echoed}


def _prompts(body: JSON) -> list[Any]:
    """A prompt is a string, token ids, or a list of either; a list of prompts fans out."""
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        return prompt
    return [prompt]


def text_reply(body: JSON, state: SimState) -> Reply:
    prompts = _prompts(body)
    n, limit = int_param(body, "n", 1, lo=1, hi=128), max_tokens(body)
    fingerprint = state.answer_fingerprint()
    rng = _text_rng(body, fingerprint, state)
    answers = [sentence(rng, limit) for _ in prompts for _ in range(n)]
    head = _head("cmpl", "text_completion", body, fingerprint)
    usage = _usage(word_count(prompts), answers)
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


MAX_INPUTS = 2048  # OpenAI's own limit of inputs per embeddings request


def _embedding_inputs(body: JSON) -> list[Any]:
    """The inputs, at most MAX_INPUTS as OpenAI allows: each costs a vector of up to 4096
    floats, so a body of millions of empty strings would ask for billions."""
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        inputs = value if isinstance(value[0], str | list) else [value]
        if len(inputs) > MAX_INPUTS:
            raise BadRequest(f"input must hold at most {MAX_INPUTS} items", "input")
        return inputs
    raise BadRequest("input must be a string or a non-empty array", "input")


def embeddings_reply(body: JSON, state: SimState) -> Reply:
    inputs = _embedding_inputs(body)
    dims = int_param(body, "dimensions", 16, lo=1, hi=4096)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest("encoding_format must be float or base64", "encoding_format")
    data = []
    for index, item in enumerate(inputs):
        vector: Any = _vector(item, dims)
        if encoding == "base64":
            vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = word_count(inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": body.get("model"), "usage": usage}
