"""The wrapper every route is served through: our errors answered in OpenAI's shape, the
request counted in the metrics and, when asked for, written to the access log."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from multidict import CIMultiDictProxy

from proxy.errors import (
    NO_API_ROUTE,
    ExpectationFailed,
    InvalidBody,
    InvalidHeader,
    MethodNotAllowed,
    NotFound,
    ProxyError,
    UpstreamError,
)
from proxy.server.context import SERVICES, Services
from proxy.server.hostcheck import check_host, check_site
from proxy.server.websocket import OPENED
from proxy.upstream.headers import framing_error

log = logging.getLogger("proxy.app")
access_log = logging.getLogger("proxy.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def observed(handler: Handler, route: str | None = None) -> Handler:
    """Turn our errors into OpenAI-shaped answers; count and log the requests of a /v1 `route`.

    A wrapper per route rather than a middleware: aiohttp then skips its middleware chain,
    which every HIT would otherwise pass through.
    """

    async def observe(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        started = services.clock()
        try:
            check_host(request, services.hosts)
            if route is not None:  # the routes that reach the upstream
                check_site(request)
            check_headers(request.headers)
            response = await handler(request)
        except UpstreamError as exc:
            if _cut_short(request):  # the client's leaving broke the upload, not the upstream
                return _left(request)
            # Our own wording, naming the host or the timeout; nothing of the request.
            log.warning("upstream failed", extra={"route": _where(request), "error": exc.message})
            response = _error_response(exc, request)
        except ProxyError as exc:
            response = _error_response(exc, request)
        except ConnectionResetError:
            if not _client_left(request):
                response = _bug(request)
            else:
                return _left(request)
        except web.HTTPException as exc:
            if exc.status < 400:  # the operators' page's redirects
                if services.lifecycle.stopping:
                    exc.force_close()
                raise
            response = _error_response(refused(exc), request)
        except Exception:
            response = _bug(request)
        took = services.clock() - started
        if type(response) is web.WebSocketResponse:  # its request took the handshake's time
            took = response[OPENED] - started
        if route is not None:
            _count(services, request, route, response, took)
        if services.settings.access_log:
            _access(request, response, took)
        if services.lifecycle.stopping:  # no client reuses a connection about to close
            response.force_close()
        return response

    return observe


CLIENT_CLOSED = 499
"""nginx's status for a request whose client left: never sent, since nobody is there."""


def _bug(request: web.Request) -> web.Response:
    """A bug of ours must still answer in OpenAI's shape, be counted and be logged."""
    log.exception("unhandled error", extra={"route": _where(request)})
    return _error_response(ProxyError("The proxy failed to handle this request."), request)


def _left(request: web.Request) -> web.Response:
    """Nobody to answer, and nothing whole was asked (its body cut short): as nginx's 499,
    logged and not counted."""
    log.info("client left before its request ended", extra={"route": _where(request)})
    return web.Response(status=CLIENT_CLOSED)


def _client_left(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _cut_short(request: web.Request) -> bool:
    """The client left before its whole body came: an upstream failure is then its own."""
    return _client_left(request) and not request.content.is_eof()


def check_headers(headers: CIMultiDictProxy[str]) -> None:
    """Refuse a header value outside Latin-1, the character set HTTP defines: forwarded or
    compared, it would fail to encode (a 500). `X-Repro-*` headers are the proxy's own and are
    never forwarded, so they may hold any UTF-8 (X-Repro-Namespace does). The common case, all
    ASCII, is one C-level pass. Refuse a body in a transfer coding besides `chunked` alone
    too: the HTTP server takes the chunks off and hands the other coding's bytes over as the
    body, undecoded, where a reader before the proxy may have decoded them."""
    framing = framing_error(headers)
    if framing is not None:
        raise InvalidBody(
            f"The request body has {framing}: send it chunked, or with a Content-Length."
        )
    if all(map(str.isascii, headers.values())):
        return
    for name, value in headers.items():
        if name.lower().startswith("x-repro-"):
            continue
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise InvalidHeader(
                f"The value of header {name} is not Latin-1 text; the proxy cannot forward it.",
                name,
            ) from None


def _where(request: web.Request) -> str:
    """The route a request matched, as the router names it (`/v1/{tail}`): a path is the
    client's to write, a few KiB of anything, and must not reach a log line at warning."""
    return request.match_info.route.resource.canonical if request.match_info.route.resource else "?"


def refused(exc: web.HTTPException) -> ProxyError:
    """A refusal raised the aiohttp way (the operators' page's 403 and 415) in OpenAI's shape:
    its text is ours, its code the status's reason (`forbidden`, `unsupported_media_type`)."""
    error = ProxyError(exc.text or exc.reason)
    error.status = exc.status
    error.code = exc.reason.lower().replace(" ", "_")
    error.type = "invalid_request_error"
    return error


UNROUTED = "/{tail:(?s:.*)}"
"""The last route: what no other route takes, answered in our shape instead of aiohttp's plain
text. Only requests that missed every other route reach it, so the rest pay nothing for it."""
UNROUTED_PATH = "/{tail}"
"""Its name as the router gives it (`canonical`)."""


async def unrouted(request: web.Request) -> web.StreamResponse:
    """404, or 405 naming in `Allow` the methods the path's routes do serve; quoting nothing
    of the request."""
    allowed: set[str] = set()
    itself = request.match_info.route.resource
    for resource in request.app.router.resources():
        if resource is not itself:
            allowed |= (await resource.resolve(request))[1]
    if not allowed:
        raise NotFound(NO_API_ROUTE)
    raise MethodNotAllowed(
        "This path's route does not serve this method; Allow names those it does.",
        headers={hdrs.ALLOW: ",".join(sorted(allowed))},
    )


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def expect(request: web.Request) -> web.StreamResponse | None:
    """aiohttp's handling of `Expect` on every route of ours, but an expectation other than
    100-continue is refused in OpenAI's shape, quoting none of it: aiohttp's own 417 is plain
    text echoing the header's value. HTTP/1.0 knows no expectations: ignored, as aiohttp does."""
    if request.version != HttpVersion11:
        return None
    if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
        await request.writer.write(CONTINUE)
        request.writer.output_size = 0  # the interim answer is not the answer's first byte
        return None
    return _error_response(
        ExpectationFailed("The proxy meets no expectation but 100-continue.", "Expect"), request
    )


def _error_response(exc: ProxyError, request: web.Request) -> web.Response:
    """The error's answer; but once part of another answer went out (a pass-through whose
    upstream broke mid-body), the client's connection is closed instead, as the upstream's
    own break would have shown: a second head written after the first one's bytes would be
    read as that answer's body, or as the answer to the client's next request."""
    started = request.writer is not None and request.writer.output_size > 0
    if started and request.transport is not None:
        request.transport.close()
    return web.Response(
        status=exc.status, body=exc.body(), content_type="application/json", headers=exc.headers
    )


def _count(
    services: Services,
    request: web.Request,
    route: str,
    response: web.StreamResponse,
    took: float,
) -> None:
    cache = response.headers.get("X-Repro-Cache", "BYPASS").lower()
    label = "error" if response.status >= 400 else cache
    services.metrics.served(route, label, took)
    if not access_log.isEnabledFor(logging.DEBUG) or services.settings.access_log:
        return
    access_log.debug(
        "request",
        extra={
            "method": request.method,
            "route": route,
            "status": response.status,
            "cache": cache,
            "ms": round(took * 1000, 2),
            "key": response.headers.get("X-Repro-Key"),
        },
    )


def _access(request: web.Request, response: web.StreamResponse, took: float) -> None:
    """The access log line: what was asked and answered, never who asked nor the prompt."""
    sent = response.body_length if response.prepared else response.content_length
    access_log.info(
        "request",
        extra={
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "cache": response.headers.get("X-Repro-Cache", "BYPASS").lower(),
            "ms": round(took * 1000, 2),
            "bytes": sent or 0,
        },
    )
