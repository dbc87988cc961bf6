"""Whole answers written to the client a piece at a time.

A `web.Response` hands its whole body to the transport at once, and asyncio keeps what the
socket has not taken yet in a buffer of the connection's own, a copy. A stored answer of
30 MB asked for by a client that reads slowly (or not at all, within `--send-timeout` between
bytes) cost the proxy 30 MB per such client: 125 of them took it to 3.7 GB. Written in pieces,
each after the last drained, a connection holds a piece or two, and every reader shares the
one copy of the body that the store or the memo holds.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from multidict import CIMultiDict

PIECE = 64 * 1024
PACED_FROM = 256 * 1024
"""Bodies from this size are written a piece at a time; smaller ones at once, as most
answers are (a coroutine per piece costs a HIT more than its buffer)."""

Headers = Mapping[str, str] | CIMultiDict[str]


def whole(body: bytes, headers: Headers, status: int = 200) -> web.StreamResponse:
    """The answer with this body: written at once when small, a piece at a time when not."""
    if len(body) < PACED_FROM:
        return web.Response(status=status, body=body, headers=headers)
    return Paced(body, headers, status)


class Paced(web.StreamResponse):
    """A whole answer of known length, written `PIECE` bytes at a time, each write waiting
    for the transport to drain (aiohttp's writer drains past 64 KiB)."""

    def __init__(self, body: bytes, headers: Headers, status: int = 200) -> None:
        super().__init__(status=status, headers=headers)
        self.content_length = len(body)
        self._paced: bytes | None = body

    async def write_eof(self, data: bytes = b"") -> None:
        body, self._paced = self._paced, None
        if body is not None:
            view = memoryview(body)
            for start in range(0, len(body), PIECE):
                await self.write(view[start : start + PIECE])
        await super().write_eof(data)
