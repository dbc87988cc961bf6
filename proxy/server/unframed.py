"""Answers whose length is known only at their end (streams, pass-throughs, exports).

HTTP/1.1 frames them in chunks; HTTP/1.0 has no chunked coding, so such an answer ends where its
connection closes (RFC 1945 7.2.2). aiohttp leaves out `Connection: keep-alive` for it but keeps
the connection open when a 1.0 client asked for keep-alive: that client then waits, answer
unfinished, until the keep-alive timeout. Every answer of unknown length is this class, which
closes the connection after it for an HTTP/1.0 client, and for every client once the process
is stopping (`Lifecycle`): answers made in their handler are prepared here, not after `observed`.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion11

from proxy.server.context import SERVICES


class Unframed(web.StreamResponse):
    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if not self.prepared and (
            (request.version < HttpVersion11 and self.content_length is None)
            or (isinstance(request, web.Request) and request.app[SERVICES].lifecycle.stopping)
        ):
            self.force_close()
        return await super().prepare(request)
