"""The simulator's /v1 routes: authentication, recording, faults, latency and SSE streaming.

Every /v1 request is recorded and counted before it is authenticated, so tests see what the
proxy sent even when the simulator refuses it.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import secrets
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.tools.sim import responses
from proxy.tools.sim.generation import Reply, chat_reply, embeddings_reply, text_reply
from proxy.tools.sim.images import images_reply, is_image_stream
from proxy.tools.sim.moderation import moderation_reply
from proxy.tools.sim.state import JSON, STATE, BadRequest, Fault, SimState, parse_object

_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo-instruct", "text-embedding-3-small")
IMMEDIATE_FAULTS = frozenset({"status", "hang", "drop"})
_HANG_LIMIT = 3600.0
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_DONE = b"data: [DONE]\n\n"
_ENDINGS = {"response_failed": "failed", "response_incomplete": "incomplete"}
Built = TypeVar("Built")


def json_response(
    payload: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    merged = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(body=orjson.dumps(payload), status=status, headers=merged)


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> JSON:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> web.Response:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return json_response(error_body(message, kind, code, param), status=status)


async def pause(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def close_connection(request: web.Request) -> None:
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


def _key(request: web.Request) -> str:
    """A bearer key, Azure's `api-key` header, or (a browser's WebSocket, which sets no
    header) a subprotocol `openai-insecure-api-key.KEY`; empty when none is given."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip() if scheme.lower() == "bearer" else ""
    offered = ",".join(request.headers.getall("Sec-WebSocket-Protocol", ())).split(",")
    in_protocol = [
        p.strip()[len(_KEY_PROTOCOL) :] for p in offered if p.strip().startswith(_KEY_PROTOCOL)
    ]
    return key or request.headers.get("api-key", "").strip() or (in_protocol or [""])[0]


_KEY_PROTOCOL = "openai-insecure-api-key."


NO_KEY = (
    "You didn't provide an API key. Give it in an Authorization header using Bearer auth "
    "(Authorization: Bearer YOUR_KEY); this sim accepts any non-empty key unless started with "
    "--api-key."
)
"""As OpenAI words it, for the newcomer whose $KEY was never set: 'Incorrect API key' sent them
looking for a key the sim would have rejected, when it wanted any."""


@web.middleware
async def v1_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record, count and authenticate every /v1 (and Azure /openai) request; router errors in
    OpenAI's shape."""
    if not request.path.startswith(("/v1/", "/openai/")):
        return await handler(request)
    state = request.app[STATE]
    recorded = await _recorded(request)
    state.record(recorded, len(recorded["body"]))
    state.count(request.path)
    key = _key(request)
    if not key:
        return error_response(401, NO_KEY, code="invalid_api_key")
    if state.api_keys and key not in state.api_keys:
        return error_response(401, "Incorrect API key provided.", code="invalid_api_key")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return error_response(exc.status, f"Invalid URL ({request.method} {request.path})")


@web.middleware
async def bad_request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return error_response(400, exc.message, param=exc.param)


async def immediate_fault(request: web.Request, fault: Fault) -> web.StreamResponse:
    """Faults that replace the whole answer: an error status, a hang, or a dropped socket."""
    if fault.kind == "status":
        default = error_body(f"Simulated error {fault.status}.", "server_error", None)
        body = default if fault.body is None else fault.body
        return json_response(body, status=fault.status, headers=fault.headers)
    if fault.kind == "hang":
        await asyncio.sleep(_HANG_LIMIT)  # cancelled when the client goes away
        return error_response(504, "Simulated hang ended.")
    close_connection(request)
    return web.Response()


async def _truncated(request: web.Request, data: bytes) -> web.StreamResponse:
    """Half of a JSON body announced in full, then a closed connection."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    close_connection(request)
    return response


def _frame(payload: JSON) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _typed_frame(event: JSON) -> bytes:
    """A Responses API event: its type named on an `event:` line too, as the real API does."""
    return b"event: " + str(event["type"]).encode() + b"\n" + _frame(event)


async def _end_stream(
    request: web.Request, response: web.StreamResponse, fault: Fault | None, state: SimState
) -> None:
    if fault is None:
        await response.write(_DONE)
        await response.write_eof()
        state.streams_completed += 1
    elif fault.kind == "cut":
        close_connection(request)
    else:
        error = error_body("The server had an error while streaming.", "server_error", None)
        await response.write(_frame(error))
        await response.write_eof()


async def _end_typed_stream(
    created: JSON,
    request: web.Request,
    response: web.StreamResponse,
    fault: Fault | None,
    state: SimState,
) -> None:
    """No `[DONE]`: a typed stream ends with its last event (`response.completed`), or, when
    it fails, with an `error`, `response.failed` or `response.incomplete` event."""
    if fault is None:
        await response.write_eof()
        state.streams_completed += 1
        return
    if fault.kind == "cut":
        close_connection(request)
        return
    if fault.kind in _ENDINGS:
        event = responses.ended_badly(created, _ENDINGS[fault.kind])
    else:
        event = {"type": "error", "code": "server_error", "param": None}
        event["message"] = "The server had an error while streaming."
    await response.write(_typed_frame({**event, "sequence_number": fault.after}))
    await response.write_eof()


async def send_stream(
    request: web.Request,
    state: SimState,
    chunks: list[JSON],
    fault: Fault | None,
    created: JSON | None = None,
) -> web.StreamResponse:
    """Send each chunk as it is produced; a client leaving early counts as a cancelled stream.
    `created`: the response a typed stream (the Responses API's) streams, `{}` for another
    typed stream (images'): each event named on an `event:` line, and no `[DONE]`."""
    response = web.StreamResponse(headers=_SSE_HEADERS)
    stop = len(chunks) if fault is None else fault.after
    frame: Callable[[JSON], bytes] = _frame
    end: Callable[[web.Request, web.StreamResponse, Fault | None, SimState], Awaitable[None]]
    end = _end_stream
    if created is not None:
        frame, end = _typed_frame, functools.partial(_end_typed_stream, created)
    try:
        await response.prepare(request)
        for index, chunk in enumerate(chunks[:stop]):
            if index:
                await pause(state.chunk_delay)
            await response.write(frame(chunk))
        await end(request, response, fault, state)
    except ConnectionResetError:
        state.streams_cancelled += 1
    except asyncio.CancelledError:
        state.streams_cancelled += 1
        raise
    return response


async def send_answer(
    request: web.Request, payload: JSON, fault: Fault | None
) -> web.StreamResponse:
    if fault is None:
        return json_response(payload)
    if fault.kind == "cut":
        return await _truncated(request, orjson.dumps(payload))
    return error_response(500, "The server had an error while processing your request.")


async def drawn_fault(
    request: web.Request, state: SimState
) -> tuple[Fault | None, web.StreamResponse | None]:
    """The next queued fault, and the answer it is when it strikes before the request is read
    (`IMMEDIATE_FAULTS`); an error status is an answer too: as slow as the others."""
    fault = state.next_fault()
    if fault is None or fault.kind not in IMMEDIATE_FAULTS:
        return fault, None
    if fault.kind == "status":
        await pause(state.latency)
    return fault, await immediate_fault(request, fault)


async def _serve_llm(
    request: web.Request, build: Callable[[JSON, SimState], Reply]
) -> web.StreamResponse:
    """The flow shared by the LLM routes: fault, validation, latency, then the answer."""
    state = request.app[STATE]
    fault, struck = await drawn_fault(request, state)
    if struck is not None:
        return struck
    body = parse_object(await request.read())
    reply = build(body, state)
    await pause(state.latency)
    if body.get("store") is True:
        _keep_chat(state, reply, body)
    if isinstance(reply, list):
        typed: JSON | None = {} if is_image_stream(reply) else None
        return await send_stream(request, state, reply, fault, typed)
    return await send_answer(request, reply, fault)


def _llm_route(build: Callable[[JSON, SimState], Reply]) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await _serve_llm(request, build)

    return handle


async def _create_response(request: web.Request) -> web.StreamResponse:
    """`POST /v1/responses`: whole, streamed as typed events, or queued (`background`)."""
    state = request.app[STATE]
    called = await _responses_call(request, responses.answer_of)
    if isinstance(called, web.StreamResponse):
        return called
    (response, answer), body, fault = called
    if (fault is None or fault.kind not in _ENDINGS) and body.get("store") is not False:
        state.keep_response(response)
    if body.get("background") is True:
        return json_response({**response, "status": "queued", "background": True})
    if body.get("stream") is True:
        return await send_stream(
            request, state, responses.events(response, answer), fault, response
        )
    return await send_answer(request, response, fault)


def _answered_whole(build: Callable[[JSON], JSON]) -> Handler:
    """A Responses API call that `build` answers whole: a compaction, a token count."""

    async def handle(request: web.Request) -> web.StreamResponse:
        called = await _responses_call(request, lambda body, _: build(body))
        if isinstance(called, web.StreamResponse):
            return called
        answer, _, fault = called
        return await send_answer(request, answer, fault)

    return handle


async def _responses_call(
    request: web.Request, build: Callable[[JSON, SimState], Built]
) -> tuple[Built, JSON, Fault | None] | web.StreamResponse:
    """The flow of a Responses API call, which may continue a response: fault, validation,
    latency; then the answer built, or the 400 of a chain on a response the sim does not keep
    (deleted, made with `store: false`, or never made), as OpenAI answers it."""
    state = request.app[STATE]
    fault, struck = await drawn_fault(request, state)
    if struck is not None:
        return struck
    body = parse_object(await request.read())
    built = build(body, state)
    await pause(state.latency)
    previous = body.get("previous_response_id")
    if previous is not None and previous not in state.responses:
        message = f"Previous response with id '{previous[:128]}' not found."
        code = "previous_response_not_found"
        return error_response(400, message, code=code, param="previous_response_id")
    return built, body, fault


async def _get_response(request: web.Request) -> web.Response:
    found = request.app[STATE].responses.get(request.match_info["id"])
    if found is None:
        message = f"No response found with id '{request.match_info['id'][:128]}'."
        return error_response(404, message, param="response_id")
    return json_response(found)


async def _delete_response(request: web.Request) -> web.Response:
    response_id = request.match_info["id"]
    if request.app[STATE].responses.pop(response_id, None) is None:
        message = f"No response found with id '{response_id[:128]}'."
        return error_response(404, message, param="response_id")
    return json_response({"id": response_id, "object": "response.deleted", "deleted": True})


def _keep_chat(state: SimState, reply: Reply, body: JSON) -> None:
    """Keep a chat completion made with `store: true`; a streamed one as its id and metadata."""
    if isinstance(reply, dict) and reply.get("object") == "chat.completion":
        state.keep_chat(reply)
    elif isinstance(reply, list) and reply and reply[0].get("object") == "chat.completion.chunk":
        head: JSON = {k: reply[0][k] for k in ("id", "created", "model") if k in reply[0]}
        state.keep_chat({**head, "object": "chat.completion", "metadata": body.get("metadata")})


async def _chat_by_id(request: web.Request) -> web.Response:
    """A stored chat completion: fetched (GET), its `metadata` replaced (POST), deleted."""
    chats, chat_id = request.app[STATE].chats, request.match_info["id"]
    found = chats.get(chat_id)
    if found is None:
        message = f"Chat completion with id '{chat_id[:128]}' not found."
        return error_response(404, message, param="completion_id")
    if request.method == "DELETE":
        del chats[chat_id]
        return json_response({"id": chat_id, "object": "chat.completion.deleted", "deleted": True})
    if request.method == "POST":
        found["metadata"] = parse_object(await request.read()).get("metadata")
    return json_response(found)


def _model(name: str) -> JSON:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "system"}


async def _models(request: web.Request) -> web.Response:
    return json_response({"object": "list", "data": [_model(name) for name in _MODELS]})


async def _model_by_id(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    if name not in _MODELS:
        return error_response(404, f"The model '{name[:128]}' does not exist", param="model")
    return json_response(_model(name))


async def _files(request: web.Request) -> web.Response:
    """Echo what arrived, so tests can check that uploads pass through the proxy intact."""
    raw = await request.read()
    return json_response(
        {
            "id": "file-" + secrets.token_hex(12),
            "object": "file",
            "bytes": len(raw),
            "content_type": request.headers.get("Content-Type", ""),
        }
    )


def routes() -> list[web.RouteDef]:
    """The OpenAI-compatible routes the proxy calls, and Azure OpenAI's shapes of them: per
    deployment, under /openai/v1, and /openai/responses."""
    chat, text, embed, moderate, draw = (
        _llm_route(b)
        for b in (chat_reply, text_reply, embeddings_reply, moderation_reply, images_reply)
    )
    compact, count = (_answered_whole(b) for b in (responses.compacted, responses.token_count))
    deployment = "/openai/deployments/{deployment}"
    listed = [
        web.post(deployment + "/chat/completions", chat),
        web.post(deployment + "/completions", text),
        web.post(deployment + "/embeddings", embed),
        web.post(deployment + "/images/generations", draw),
        web.post("/openai/responses", _create_response),
        web.get("/openai/responses/{id}", _get_response),
        web.delete("/openai/responses/{id}", _delete_response),
    ]
    for base in ("/v1", "/openai/v1"):
        listed += [
            web.post(base + "/chat/completions", chat),
            web.post(base + "/completions", text),
            web.post(base + "/embeddings", embed),
            web.post(base + "/moderations", moderate),
            web.post(base + "/images/generations", draw),
            web.post(base + "/responses", _create_response),
            web.post(base + "/responses/compact", compact),
            web.post(base + "/responses/input_tokens", count),
            web.get(base + "/responses/{id}", _get_response),
            web.delete(base + "/responses/{id}", _delete_response),
            *(
                web.route(method, base + "/chat/completions/{id}", _chat_by_id)
                for method in ("GET", "POST", "DELETE")
            ),
        ]
    bases = ("/v1/models", "/openai/models", "/openai/v1/models")
    models = [web.get(path, _models) for path in bases]
    models += [web.get(path + "/{model}", _model_by_id) for path in bases]
    return [*listed, *models, web.post("/v1/files", _files)]
