"""Requests refused before any route sees them, and the bytes of an answer that closes its
connection.

aiohttp's parser takes some requests no reader in front of the proxy frames alike, and answers
those it cannot parse, or CONNECT, in plain text quoting what the client sent: each is refused
here in OpenAI's error shape, quoting nothing, and its connection closed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from proxy.errors import MalformedRequest, MethodNotAllowed, ProxyError

log = logging.getLogger("proxy.serving")


class Handler(RequestHandler):
    """aiohttp's request handler, but a request that is not HTTP/1.1 it can parse is the
    client's error, not the server's: answered in OpenAI's shape, quoting none of its bytes, and
    logged at info with the kind of error only. aiohttp answers such a request in plain text
    quoting the offending line (credentials included) and logs it as an error with a traceback,
    so that any client could fill the error log. Failures of the server itself (5xx) keep
    aiohttp's handling."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        kind = type(exc).__name__ if exc is not None else "unknown"
        log.info("malformed request refused", extra={"status": status, "error": kind})
        if log.isEnabledFor(logging.DEBUG):
            log.debug("malformed request", extra={"detail": message or str(exc)})
        error = MalformedRequest(f"The request is not HTTP/1.1 the proxy can read ({kind}).")
        response = web.Response(status=status, body=error.body(), content_type="application/json")
        response.force_close()
        return response


RequestHandlerFn = Callable[[BaseRequest], Awaitable[web.StreamResponse]]


def framed_by_version(handler: RequestHandlerFn) -> RequestHandlerFn:
    """`handler`, for HTTP/1.1 and for HTTP/1.0 without a Transfer-Encoding; anything else is
    refused and its connection closed. HTTP/1.0 knows no chunks (RFC 9112 6.1: such framing
    is faulty): a reader in front of the proxy takes the body for none and the chunks for the
    next request, while aiohttp reads them as the body and serves what follows on the
    connection. Its parser also takes `HTTP/2.0` and `HTTP/0.9` request lines, which no reader
    in front frames alike (nginx refuses them). A plain function: no frame of its own."""

    def checked(request: BaseRequest) -> Awaitable[web.StreamResponse]:
        version = request.version
        if version != HttpVersion11 and (
            version != HttpVersion10 or hdrs.TRANSFER_ENCODING in request.headers
        ):
            return _refused(version)
        if request.method == hdrs.METH_CONNECT:
            return _untunnelled()
        return handler(request)

    return checked


TUNNELLED = "DELETE,GET,HEAD,OPTIONS,PATCH,POST,PUT"
"""What a 405 to CONNECT allows: the methods the proxy's routes serve, none of them a tunnel."""


async def _untunnelled() -> web.StreamResponse:
    """CONNECT asks for a tunnel, and aiohttp reads its target as an authority that no route
    matches, answering a plain-text 404 itself: refused here in our shape instead, and the
    connection closed, since a client may already be sending the tunnel's bytes."""
    error = MethodNotAllowed(
        "The proxy tunnels nothing: CONNECT is not served.", headers={hdrs.ALLOW: TUNNELLED}
    )
    response = web.Response(
        status=error.status,
        body=error.body(),
        content_type="application/json",
        headers=error.headers,
    )
    response.force_close()
    return response


async def _refused(version: HttpVersion) -> web.StreamResponse:
    why = f"HTTP/{version.major}.{version.minor}"
    if version == HttpVersion10:
        why += " with a Transfer-Encoding"
    log.info("malformed request refused", extra={"status": 400, "error": why})
    error = MalformedRequest(f"The request is not HTTP/1.1 the proxy can read ({why}).")
    response = web.Response(status=400, body=error.body(), content_type="application/json")
    response.force_close()
    return response


def closing_answer(error: ProxyError) -> bytes:
    """`error` as the bytes of a whole answer that asks for a retry later and closes the
    connection: written straight to a transport no request of aiohttp's answers."""
    body = error.body()
    head = (
        f"HTTP/1.1 {error.status} Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body
