"""The Responses API's answers (pure): a response object, or the typed events that stream it.

The Responses API takes no seed, so the text is fixed by the body and the system_fingerprint
alone. Ids are fresh on every answer, as on the real service, and a request may continue
(`previous_response_id`) only a response the simulator keeps: one made with `store` on and
not deleted. A forced function (`tool_choice` "required" or naming one) gets a
`function_call` item with arguments fitting its schema, so agent loops that call tools can run
against the simulator.
"""

from __future__ import annotations

import base64
import hashlib
import random
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import orjson

from proxy.tools.sim.generation import Answer, max_tokens, sentence, tool_call, word_count
from proxy.tools.sim.state import JSON, BadRequest, SimState

_VOLATILE = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "metadata",
        "safety_identifier",
        "prompt_cache_key",
        "store",
        "background",
    }
)


def _rng(body: JSON, fingerprint: str | None) -> random.Random:
    stable = {k: v for k, v in body.items() if k not in _VOLATILE}
    material = orjson.dumps(stable, option=orjson.OPT_SORT_KEYS) + (fingerprint or "").encode()
    return random.Random(hashlib.sha256(material).digest())


def _forced_function(body: JSON) -> JSON | None:
    """The function a request forces: "required" takes the first, an object names one."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not isinstance(tools, list):
        return None
    named = [
        t
        for t in tools
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str)
    ]
    if choice == "required" and named:
        return named[0]
    if isinstance(choice, dict) and choice.get("type") == "function":
        return next((t for t in named if t["name"] == choice.get("name")), None)
    return None


def _item(answer: Answer) -> JSON:
    """The output item of one answer, as it stands complete."""
    if answer.tool is not None:
        return {
            "id": "fc_" + secrets.token_hex(12),
            "type": "function_call",
            "status": "completed",
            "call_id": answer.call_id,
            "name": answer.tool,
            "arguments": answer.text,
        }
    part = {"type": "output_text", "text": answer.text, "annotations": [], "logprobs": []}
    return {
        "id": "msg_" + secrets.token_hex(12),
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [part],
    }


def _echoed(tool: Any) -> Any:
    """A tool as the response object repeats it: an MCP tool's credentials (`headers`,
    `authorization`) left out and its `server_url` cut to the host, as OpenAI does, since some
    servers put a key in the URL's path. A hosted container's domain secrets are repeated
    without their `value` (what OpenAI repeats of them is not documented: an upstream that
    repeats it has it stored with the answer, as docs/security.md says)."""
    if not isinstance(tool, dict):
        return tool
    if tool.get("type") != "mcp":
        return {name: _without_secrets(value) for name, value in tool.items()}
    echoed = {name: value for name, value in tool.items() if name != "authorization"}
    echoed["headers"] = None
    url = tool.get("server_url")
    if isinstance(url, str):
        parts = urlsplit(url)
        echoed["server_url"] = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    return echoed


def _without_secrets(place: Any) -> Any:
    """A tool's `container` or `environment`, its network policy's domain secrets valueless."""
    policy = place.get("network_policy") if isinstance(place, dict) else None
    if not isinstance(policy, dict) or not isinstance(policy.get("domain_secrets"), list):
        return place
    secrets = [
        {name: value for name, value in secret.items() if name != "value"}
        if isinstance(secret, dict)
        else secret
        for secret in policy["domain_secrets"]
    ]
    return place | {"network_policy": policy | {"domain_secrets": secrets}}


def _response(body: JSON, state: SimState, output: list[JSON], usage: JSON | None) -> JSON:
    return {
        "id": "resp_" + secrets.token_hex(24),
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model"),
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [_echoed(tool) for tool in body.get("tools") or []],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": usage,
        "user": body.get("user"),
        "safety_identifier": body.get("safety_identifier"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "metadata": body.get("metadata") or {},
        "access_programs": body.get("access_programs", state.access_programs),
    }


def _usage(body: JSON, answer: Answer) -> JSON:
    prompt = word_count(body.get("input")) + word_count(body.get("instructions") or "")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": len(answer.pieces),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + len(answer.pieces),
    }


def answer_of(body: JSON, state: SimState) -> tuple[JSON, Answer]:
    """The complete response object, and the answer it holds (for streaming it piece by piece)."""
    if not isinstance(body.get("input"), str | list):
        raise BadRequest("input must be a string or an array of items", "input")
    if not isinstance(body.get("tools", []), list | None):
        raise BadRequest("Invalid type for 'tools': expected an array.", "tools")
    _check_previous(body)
    rng = _rng(body, state.fingerprint)
    function = _forced_function(body)
    answer = sentence(rng, max_tokens(body, "max_output_tokens"))
    if function is not None:
        answer = tool_call(function, rng)
    return _response(body, state, [_item(answer)], _usage(body, answer)), answer


def _check_previous(body: JSON) -> None:
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        name = "previous_response_id"
        raise BadRequest(f"Invalid type for '{name}': expected a string.", name)


def compacted(body: JSON) -> JSON:
    """A compaction (`POST /v1/responses/compact`): the input's user messages, then one
    compaction item. Its `encrypted_content` is drawn anew on every call, as a model's summary
    may come out otherwise each time: only a cache repeats it."""
    _check_previous(body)
    items = body.get("input", [] if body.get("previous_response_id") else None)
    if not isinstance(items, str | list):
        raise BadRequest("input must be a string or an array of items", "input")
    if isinstance(items, str):
        items = [{"role": "user", "content": [{"type": "input_text", "text": items}]}]
    kept = [item for item in items if isinstance(item, dict) and item.get("role") == "user"]
    messages = [
        {**item, "type": "message", "id": "msg_" + secrets.token_hex(24), "status": "completed"}
        for item in kept
    ]
    summary = base64.b64encode(secrets.token_bytes(48)).decode()
    compaction = {"type": "compaction", "id": "cmp_" + secrets.token_hex(24)}
    prompt = word_count(body.get("input")) + word_count(body.get("instructions") or "")
    return {
        "id": "resp_" + secrets.token_hex(24),
        "object": "response.compaction",
        "created_at": int(time.time()),
        "output": [*messages, {**compaction, "encrypted_content": summary}],
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 12,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + 12,
        },
        "safety_identifier": body.get("safety_identifier"),
    }


def token_count(body: JSON) -> JSON:
    """A token count (`POST /v1/responses/input_tokens`), a word a token as the sim's usage
    counts them: fixed by the body, as a tokenizer's count is."""
    _check_previous(body)
    items = body.get("input")
    if items is not None and not isinstance(items, str | list):
        raise BadRequest("input must be a string or an array of items", "input")
    tokens = word_count(items or "") + word_count(body.get("instructions") or "")
    return {"object": "response.input_tokens", "input_tokens": tokens}


def events(response: JSON, answer: Answer) -> list[JSON]:
    """The typed events of a streamed response, numbered in order; the last is completed."""
    item = response["output"][0]
    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    listed: list[JSON] = [
        {"type": "response.created", "response": pending},
        {"type": "response.in_progress", "response": pending},
        *_item_events(item, answer),
        {"type": "response.completed", "response": response},
    ]
    return [{**event, "sequence_number": n} for n, event in enumerate(listed)]


def _item_events(item: JSON, answer: Answer) -> Iterator[JSON]:
    where: dict[str, Any] = {"item_id": item["id"], "output_index": 0}
    if item["type"] == "function_call":
        yield {"type": "response.output_item.added", "output_index": 0, "item": _open(item)}
        for piece in answer.pieces:
            yield {"type": "response.function_call_arguments.delta", **where, "delta": piece}
        done = {"arguments": item["arguments"]}
        yield {"type": "response.function_call_arguments.done", **where, **done}
        yield {"type": "response.output_item.done", "output_index": 0, "item": item}
        return
    part = item["content"][0]
    empty = {**part, "text": ""}
    text_at = {**where, "content_index": 0}
    yield {"type": "response.output_item.added", "output_index": 0, "item": _open(item)}
    yield {"type": "response.content_part.added", **text_at, "part": empty}
    for piece in answer.pieces:
        yield {"type": "response.output_text.delta", **text_at, "delta": piece, "logprobs": []}
    done = {"text": part["text"], "logprobs": []}
    yield {"type": "response.output_text.done", **text_at, **done}
    yield {"type": "response.content_part.done", **text_at, "part": part}
    yield {"type": "response.output_item.done", "output_index": 0, "item": item}


def _open(item: JSON) -> JSON:
    """An item as it is announced: in progress, with nothing in it yet."""
    if item["type"] == "function_call":
        return {**item, "status": "in_progress", "arguments": ""}
    return {**item, "status": "in_progress", "content": []}


def ended_badly(response: JSON, kind: str) -> JSON:
    """The terminal event of a stream that fails (`failed`) or stops short (`incomplete`)."""
    if kind == "incomplete":
        details = {"reason": "max_output_tokens"}
        return {
            "type": "response.incomplete",
            "response": {**response, "status": "incomplete", "incomplete_details": details},
        }
    error = {"code": "server_error", "message": "The simulated response failed."}
    return {"type": "response.failed", "response": {**response, "status": "failed", "error": error}}
