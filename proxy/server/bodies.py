"""Request bodies as handlers read them: bounded in size, in silence (nginx's
client_body_timeout), and inflated here rather than by aiohttp's server.

aiohttp's server inflates a gzip body while parsing it but never checks that its stream ended:
a body cut short reads as its prefix, without error. Its inflation is turned off
(`HANDLER_ARGS`, for every server of the app) and `proxy.core.inflate` does it instead, so a
compressed body that does not end where its format says is refused with 400 `invalid_body`
before a handler takes it as whole; a body streamed upstream then fails its upstream request
before it ends. A limit applies to what the client sends and to what it inflates to.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.web import RequestPayloadError

from proxy.core.budget import Budget
from proxy.core.inflate import CODINGS, Inflater
from proxy.errors import (
    InvalidBody,
    RequestTimeout,
    RequestTooLarge,
    TooManyBodies,
    UnsupportedEncoding,
)

ACCEPTED = "identity, gzip, deflate"
"""The request codings the proxy reads. Not zstd: the zstandard library's streaming
decompressor returns all that one input inflates to, with no bound on it, so a small bomb
would be allocated whole before any limit could refuse it; nor br, whose library the proxy
does not carry. A pass-through route forwards either exactly as sent."""

HANDLER_ARGS: Mapping[str, Any] = MappingProxyType({"auto_decompress": False})
"""aiohttp's request handler arguments: the raw body, which only this module inflates."""


def coding(request: web.Request) -> str:
    """The body's Content-Encoding, lower case, every line of it (two `gzip` lines are
    `gzip, gzip`, not `gzip`); "" for a plain body."""
    lines = request.headers.getall("Content-Encoding", ())
    if not lines:  # most bodies
        return ""
    value = ", ".join(lines).strip().lower()
    return "" if value == "identity" else value


def inflates(request: web.Request) -> bool:
    """Whether the body handlers read is the inflated form of what the client sent."""
    return coding(request) in CODINGS


async def read(
    request: web.Request, limit: int, idle: float, budget: Budget | None = None
) -> bytes:
    """The whole body, inflated; refused once it is known to exceed `limit` (sent or
    inflated), goes silent for `idle` seconds, or is in a coding the proxy cannot read, or
    would take what the bodies being read hold together past `budget` (proxy.core.budget)."""
    encoding = coding(request)
    if encoding and encoding not in CODINGS:
        raise UnsupportedEncoding(
            f"The request body's Content-Encoding {encoding[:40]!r} is not one the proxy reads: "
            "send it plain (identity), gzip or deflate.",
            headers={"Accept-Encoding": ACCEPTED},
        )
    body = whole(request, limit)
    if body is not None:
        return body
    budget = budget or Budget(limit)
    received = bytearray()
    try:
        async for chunk in _chunks(request.content, encoding, limit, idle):  # length checked
            if not budget.take(len(chunk)):
                raise TooManyBodies(
                    "The proxy is reading as many request bodies at once as it holds; retry "
                    "in a moment.",
                    headers={"Retry-After": "1"},
                )
            received += chunk
        return bytes(received)
    finally:
        budget.give(len(received))
        # An error (a client that hung up, a body refused) keeps this frame alive through its
        # traceback, which the request's stream keeps too: a cycle only the collector's
        # oldest generation frees. 16 KiB of gzip a client cut short held 16 MiB until then.
        received.clear()


def whole(request: web.Request, limit: int) -> bytes | None:
    """The body when all of it came with the head, plain: no reads to wait on, so no coroutine
    (a HIT pays for each); else None, for `read`."""
    content = _checked(request, limit)
    if not content.is_eof() or coding(request):
        return None
    body = _received(content)
    if len(body) > limit:
        raise RequestTooLarge(_too_large(limit))
    return body


def stream(request: web.Request, limit: int, idle: float) -> AsyncIterator[bytes]:
    """The body as it arrives: inflated when it came as gzip or deflate, else as sent. Its
    declared length is checked now, the rest as it comes, and a compressed one's end last."""
    return _chunks(_checked(request, limit), coding(request), limit, idle)


async def _chunks(
    content: StreamReader, encoding: str, limit: int, idle: float
) -> AsyncIterator[bytes]:
    inflater = Inflater(encoding) if encoding in CODINGS else None
    sent = inflated = 0
    while chunk := await _next_chunk(content, idle):
        sent += len(chunk)
        if sent > limit:
            raise RequestTooLarge(_too_large(limit))
        if inflater is None:
            yield chunk
            continue
        for piece in inflater.feed(chunk):
            inflated += len(piece)
            if inflated > limit:
                raise RequestTooLarge(_too_large(limit))
            yield piece
    if inflater is not None:
        inflater.finish()


def _checked(request: web.Request, limit: int) -> StreamReader:
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge(_too_large(limit))
    return request.content


def _too_large(limit: int) -> str:
    return f"The request body exceeds the limit of {limit} bytes (--max-body)."


async def _next_chunk(content: StreamReader, idle: float) -> bytes:
    """The next chunk of a body, b"" at its end. Bytes already received are taken without a
    timer; a wait for more is bounded by `idle` seconds."""
    chunk = _received(content)
    if chunk or content.is_eof():
        return chunk
    try:
        async with asyncio.timeout(idle):
            return await content.readany()
    except TimeoutError:
        raise RequestTimeout(
            f"The request body went silent for more than {idle:g} seconds (--body-timeout)."
        ) from None
    except RequestPayloadError:
        raise _unreadable() from None


def _received(content: StreamReader) -> bytes:
    """The bytes of a body received so far, without waiting."""
    try:
        return content.read_nowait()
    except RequestPayloadError:
        raise _unreadable() from None


def _unreadable() -> InvalidBody:
    """aiohttp's parser found the body broken (its message withheld: it may quote the body)."""
    return InvalidBody("The request body could not be read: a chunk is broken.")
