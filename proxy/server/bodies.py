"""Request bodies read with a bound on silence (nginx's client_body_timeout): a client may not
hold a request, and the connection under it, by pausing between chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import StreamReader
from aiohttp.web import RequestPayloadError

from proxy.errors import InvalidBody, RequestTimeout


async def next_chunk(content: StreamReader, idle: float) -> bytes:
    """The next chunk of a body, b"" at its end. Bytes already received are taken without a
    timer; a wait for more is bounded by `idle` seconds."""
    chunk = received(content)
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


def received(content: StreamReader) -> bytes:
    """The bytes of a body received so far, without waiting."""
    try:
        return content.read_nowait()
    except RequestPayloadError:
        raise _unreadable() from None


def _unreadable() -> InvalidBody:
    """aiohttp's parser found the body broken (its message withheld: it may quote the body)."""
    return InvalidBody(
        "The request body could not be read: a broken chunk, or bytes that are not what its "
        "Content-Encoding says."
    )


async def chunks(content: StreamReader, idle: float) -> AsyncIterator[bytes]:
    """Every chunk of a body as it comes, each wait bounded by `idle` seconds."""
    while chunk := await next_chunk(content, idle):
        yield chunk
