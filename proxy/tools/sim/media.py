"""The simulator's routes whose requests or answers are not JSON alone: speech's sound, form
uploads (transcriptions and translations, image edits and variations), and Azure OpenAI's
shapes of them."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.tools.sim.handlers import (
    close_connection,
    drawn_fault,
    error_response,
    pause,
    send_answer,
    send_stream,
)
from proxy.tools.sim.images import edited, is_image_stream
from proxy.tools.sim.speech import speech_reply
from proxy.tools.sim.state import JSON, STATE, Said, parse_object
from proxy.tools.sim.transcription import transcription


def routes() -> list[web.RouteDef]:
    answered = {
        "/audio/speech": _media_route(_speech),
        "/audio/transcriptions": _media_route(functools.partial(transcription, translate=False)),
        "/audio/translations": _media_route(functools.partial(transcription, translate=True)),
        "/images/edits": _media_route(functools.partial(edited, variation=False)),
        "/images/variations": _media_route(functools.partial(edited, variation=True)),
    }
    bases = ("/v1", "/openai/v1", "/openai/deployments/{deployment}")
    return [web.post(base + path, handle) for base in bases for path, handle in answered.items()]


def _media_route(build: Callable[[web.Request], Awaitable[Said]]) -> Handler:
    """A route whose answer may be bytes of a type (sound, a transcript as text) besides JSON
    or events: the fault flow of the LLM routes; bytes go chunked, as OpenAI sends them, and
    a `cut` fault ends them halfway with the connection closed."""

    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        fault, struck = await drawn_fault(request, state)
        if struck is not None:
            return struck
        reply = await build(request)
        await pause(state.latency)
        if isinstance(reply, list):
            typed: JSON | None = {} if is_image_stream(reply) else None
            return await send_stream(request, state, reply, fault, typed)
        if isinstance(reply, dict):
            return await send_answer(request, reply, fault)
        if fault is not None and fault.kind != "cut":
            return error_response(500, "The server had an error while processing your request.")
        data, content_type = reply
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(data if fault is None else data[: len(data) // 2])
        if fault is not None:
            close_connection(request)
            return response
        await response.write_eof()
        return response

    return handle


async def _speech(request: web.Request) -> Said:
    return speech_reply(parse_object(await request.read()))
