"""An upstream's refusal of a WebSocket handshake, kept whole for the client.

aiohttp's `ws_connect` raises on an answer that is no 101 and drops its body, where the client
should read the upstream's own error ("Incorrect API key provided") as from any pass-through.
A trace hook (aiohttp's public `TraceConfig`) reads the body first, bounded, into a context
variable of the task that asked; the error raised in its place carries it.
"""

from __future__ import annotations

from contextvars import ContextVar
from types import SimpleNamespace

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.upstream.headers import safe_headers


class WebSocketRefused(Exception):
    """The upstream answered a WebSocket handshake with an HTTP answer of its own: its status,
    its headers (checked as every answer's) and its body (None when over the limit kept)."""

    def __init__(self, status: int, headers: CIMultiDictProxy[str], body: bytes | None) -> None:
        super().__init__(f"the upstream refused the WebSocket with {status}")
        self.status = status
        self.headers = safe_headers(headers)
        self.body = body


_kept: ContextVar[bytes | None] = ContextVar("refusal", default=None)
"""The body of an answer that refused the handshake in progress, in the task that asked."""


def keeping(limit: int) -> aiohttp.TraceConfig:
    """A trace that keeps the body (at most `limit` bytes, else None) of an answer that is no
    101, which `refused` reads; and that refuses to follow a redirect, which `ws_connect`
    does (it takes no `allow_redirects`): followed, it sent the client's `api-key` (aiohttp
    drops only `Authorization` and cookies) to whatever host, path or plain-http URL the
    upstream named, ten times over. The redirect is the upstream's answer, relayed as such."""

    async def keep(
        _session: aiohttp.ClientSession,
        _trace: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        if params.response.status != 101:
            _kept.set(await _body(params.response, limit))

    async def refuse(
        _session: aiohttp.ClientSession,
        _trace: SimpleNamespace,
        params: aiohttp.TraceRequestRedirectParams,
    ) -> None:
        answer = params.response
        body = await _body(answer, limit)
        answer.close()  # not read to its end: never back in the pool
        raise WebSocketRefused(answer.status, CIMultiDictProxy(CIMultiDict(answer.headers)), body)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(keep)
    trace.on_request_redirect.append(refuse)
    return trace


async def _body(answer: aiohttp.ClientResponse, limit: int) -> bytes | None:
    body, content = b"", answer.content
    while len(body) <= limit:
        chunk = await content.read(limit + 1 - len(body))
        if not chunk:
            return body
        body += chunk
    return None


def forget() -> None:
    """Before a handshake: no earlier refusal's body stands for this one's."""
    _kept.set(None)


def refused(exc: aiohttp.WSServerHandshakeError) -> WebSocketRefused:
    """The refusal `exc` reports, with the body kept for it."""
    headers = CIMultiDictProxy(CIMultiDict(exc.headers or {}))
    return WebSocketRefused(exc.status, headers, _kept.get())
