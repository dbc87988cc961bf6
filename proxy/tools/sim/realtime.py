"""The simulator's Realtime API: a WebSocket speaking OpenAI's realtime events, in text.

A session opens with `session.created`; `session.update`, `conversation.item.create` and
`response.create` are answered as the Realtime API answers them (a response's text comes in
`response.output_text.delta` events, one per word); anything else gets an `error` event. A
queued fault (`/_sim/faults`) of kind `status`, `hang` or `drop` answers the handshake as it
answers any LLM route (an error status and body, no answer, a dropped socket).
Three events of the sim's own let tests play a hostile or unusual upstream: `sim.close`
(`code`, `reason`) closes the socket with them, `sim.big` (`bytes`) sends one text message that
long, and a binary message comes back as it was sent. `/_sim/stats` names the close code each
session ended with (`realtime_closes`).
"""

from __future__ import annotations

import itertools
import secrets
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from proxy.tools.sim.handlers import IMMEDIATE_FAULTS, immediate_fault
from proxy.tools.sim.state import STATE

PROTOCOL = "realtime"
MODEL = "gpt-realtime"
MAX_BIG = 64 * 1024 * 1024
MAX_MESSAGE = 16 * 1024 * 1024
KEPT_ITEMS = 100
"""Conversation items a session remembers (the last said is what a reply names)."""

Event = dict[str, Any]


def routes() -> list[web.RouteDef]:
    return [
        web.get(path, _session)
        for path in ("/v1/realtime", "/openai/v1/realtime", "/openai/realtime")
    ]


async def _session(request: web.Request) -> web.StreamResponse:
    fault = request.app[STATE].next_fault()
    if fault is not None and fault.kind in IMMEDIATE_FAULTS:
        return await immediate_fault(request, fault)
    socket = web.WebSocketResponse(protocols=(PROTOCOL,), max_msg_size=MAX_MESSAGE)
    await socket.prepare(request)
    try:
        await _converse(socket, request)
    finally:
        request.app[STATE].realtime_closes.append(socket.close_code)
    return socket


async def _converse(socket: web.WebSocketResponse, request: web.Request) -> None:
    ids = (f"{n:04d}" for n in itertools.count(1))
    session: Event = {
        "id": "sess_" + secrets.token_hex(8),
        "object": "realtime.session",
        "type": "realtime",
        "model": request.query.get("model") or request.query.get("deployment") or MODEL,
        "output_modalities": ["text"],
    }
    conversation: list[str] = []

    async def send(event: Event) -> None:
        await socket.send_str(orjson.dumps({"event_id": "event_" + next(ids), **event}).decode())

    await send({"type": "session.created", "session": session})
    async for message in socket:
        if message.type is WSMsgType.BINARY:
            await socket.send_bytes(message.data)
            continue
        if message.type is not WSMsgType.TEXT:
            break
        try:
            event = orjson.loads(message.data)
        except orjson.JSONDecodeError:
            await send(_error("invalid_json", "The event is not JSON."))
            continue
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "session.update":
            session.update(_object(event.get("session")))
            await send({"type": "session.updated", "session": session})
        elif kind == "conversation.item.create":
            item = {
                "id": "item_" + secrets.token_hex(6),
                "status": "completed",
                **_object(event.get("item")),
            }
            conversation[:] = [*conversation[-KEPT_ITEMS + 1 :], _text_of(item)]
            await send({"type": "conversation.item.added", "previous_item_id": None, "item": item})
            await send({"type": "conversation.item.done", "previous_item_id": None, "item": item})
        elif kind == "response.create":
            for reply in _response(conversation):
                await send(reply)
        elif kind == "sim.close":
            code = _number(event.get("code"), 1000)
            await socket.close(
                code=code if 1000 <= code < 5000 else 1000,
                message=str(event.get("reason", ""))[:100].encode(),
            )
            break
        elif kind == "sim.big":
            await socket.send_str("x" * min(max(_number(event.get("bytes"), 0), 0), MAX_BIG))
        else:
            await send(_error("unknown_event", f"Unknown event type {str(kind)[:40]!r}."))


def _object(value: object) -> Event:
    """A client's JSON object, or an empty one for anything else it sent."""
    return value if isinstance(value, dict) else {}


def _number(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _error(code: str, message: str) -> Event:
    return {
        "type": "error",
        "error": {"type": "invalid_request_error", "code": code, "message": message},
    }


def _text_of(item: Event) -> str:
    """The text of a conversation item's parts (`input_text`, `text`)."""
    parts = item.get("content")
    if not isinstance(parts, list):
        return ""
    return " ".join(str(part.get("text", "")) for part in parts if isinstance(part, dict))


def _response(conversation: list[str]) -> list[Event]:
    """A response's events: the reply names the last thing said, a word per delta."""
    said = conversation[-1] if conversation else ""
    words = ["You", "said:", *said.split()[:50]]
    response_id, item_id = "resp_" + secrets.token_hex(8), "item_" + secrets.token_hex(6)
    text = " ".join(words)
    where = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
    item = {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text}],
    }
    usage = {
        "input_tokens": len(said.split()),
        "output_tokens": len(words),
        "total_tokens": len(said.split()) + len(words),
    }
    begun = {
        "id": response_id,
        "object": "realtime.response",
        "status": "in_progress",
        "output": [],
    }
    return [
        {"type": "response.created", "response": begun},
        *(
            {"type": "response.output_text.delta", **where, "delta": word if n == 0 else " " + word}
            for n, word in enumerate(words)
        ),
        {"type": "response.output_text.done", **where, "text": text},
        {
            "type": "response.done",
            "response": {**begun, "status": "completed", "output": [item], "usage": usage},
        },
    ]
