"""Request bodies read with a bound on silence (nginx's client_body_timeout): a client may not
hold a request, and the connection under it, by pausing between chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import StreamReader

from proxy.errors import RequestTimeout


async def next_chunk(content: StreamReader, idle: float) -> bytes:
    """The next chunk of a body, b"" at its end. Bytes already received are taken without a
    timer; a wait for more is bounded by `idle` seconds."""
    chunk = content.read_nowait()
    if chunk or content.is_eof():
        return chunk
    try:
        async with asyncio.timeout(idle):
            return await content.readany()
    except TimeoutError:
        raise RequestTimeout(
            f"The request body went silent for more than {idle:g} seconds (--body-timeout)."
        ) from None


async def chunks(content: StreamReader, idle: float) -> AsyncIterator[bytes]:
    """Every chunk of a body as it comes, each wait bounded by `idle` seconds."""
    while chunk := await next_chunk(content, idle):
        yield chunk
