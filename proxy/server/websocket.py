"""A WebSocket under /v1 (the Realtime API) relayed to the upstream, message by message.

A WebSocket is a pass-through like any other route the cache does not answer: never cached,
refused in replay mode, the client's end-to-end headers sent on, subprotocols offered as the
client offered them (browsers carry a key in one: it is relayed, never logged). What crosses
is bounded: a message either way at most --max-body, no compression (no frame inflating past
that bound), heartbeat pings on both sides so that a dead peer ends the session. When one side
closes, the other is closed with its code, or, where that side failed without one, with 1014
(bad gateway, the upstream's failure) or 1001 (going away, the client's); a proxy told to
stop closes every session with 1001 at once, so its clients reconnect elsewhere instead of
waiting for the drain to cut them.
"""

from __future__ import annotations

import asyncio

from aiohttp import WSCloseCode, WSMsgType, web

from proxy.errors import CrossSite, InvalidBody, InvalidHeader, ProxyError
from proxy.server.context import Lifecycle, Services
from proxy.server.hostcheck import own_origin
from proxy.upstream.client import UpstreamSocket
from proxy.upstream.headers import REQUEST_SKIP, request_headers, response_headers
from proxy.upstream.refusal import WebSocketRefused

HEARTBEAT = 30.0
"""Seconds between pings on each side; a peer that answers none within half of it is gone."""

_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)
"""The client's handshake with the proxy, which the proxy's own with the upstream replaces."""
_SKIP = REQUEST_SKIP | _HANDSHAKE

_SENDABLE = (
    frozenset(range(1000, 1004)) | frozenset(range(1007, 1015)) | frozenset(range(3000, 5000))
)
"""Close codes a close frame may carry (RFC 6455 7.4.1; 1005, 1006 and 1015 name what no frame
said; 1014 is IANA's bad gateway)."""

STOPPING = b"the proxy is shutting down"

OPENED = web.ResponseKey("opened", float)
"""When the client's session opened (the services' clock): where its request's time ends."""

Socket = web.WebSocketResponse | UpstreamSocket


def asked(request: web.Request) -> bool:
    """A WebSocket handshake: GET asking to upgrade to `websocket` (RFC 6455 4.1). Any other
    Upgrade is hop-by-hop, dropped on the way like the rest."""
    if request.method != "GET":
        return False
    offered = ",".join(request.headers.getall("Upgrade", ())).lower().split(",")
    return "websocket" in (word.strip() for word in offered)


async def relay(request: web.Request, services: Services, target: str) -> web.StreamResponse:
    """Open the upstream's WebSocket first, so that its refusal (a 401, a 404) reaches the
    client as the HTTP answer it is, then accept the client's and relay both ways."""
    _check_origin(request)
    if request.body_exists:
        raise InvalidBody("A WebSocket handshake carries no body.")
    if not web.WebSocketResponse().can_prepare(request).ok:
        raise InvalidHeader(
            "This WebSocket handshake is incomplete (RFC 6455 4.1: Connection: Upgrade, "
            "Sec-WebSocket-Key, Sec-WebSocket-Version: 13).",
            "Upgrade",
        )
    offered = [
        name.strip()
        for line in request.headers.getall("Sec-WebSocket-Protocol", ())
        for name in line.split(",")
        if name.strip()
    ]
    try:
        upstream = await services.upstream.websocket(
            target,
            request_headers(request.headers, _SKIP),
            offered,
            services.settings.max_body,
            HEARTBEAT,
        )
    except WebSocketRefused as refused:
        return _refusal(refused)
    try:
        chosen = (upstream.protocol,) if upstream.protocol else ()
        client = web.WebSocketResponse(
            protocols=chosen,
            max_msg_size=services.settings.max_body,
            compress=False,
            heartbeat=HEARTBEAT,
        )
        client.headers["X-Repro-Cache"] = "BYPASS"
        await client.prepare(request)
        lifecycle = services.lifecycle
        lifecycle.tunnels.add(client)
        client[OPENED] = services.clock()
        services.metrics.websocket_opened()
        try:
            await asyncio.gather(
                _pump(upstream, client, UPSTREAM_FAILED, lifecycle),
                _pump(client, upstream, CLIENT_FAILED, lifecycle),
            )
        finally:
            lifecycle.tunnels.discard(client)
            services.metrics.websocket_closed(services.clock() - client[OPENED])
    finally:
        if not upstream.closed:
            await upstream.close(code=WSCloseCode.GOING_AWAY)
    return client


def _check_origin(request: web.Request) -> None:
    """Refuse a browser's WebSocket from a page of another origin (cross-site WebSocket
    hijacking). CORS does not cover WebSockets: such a page reads every message, so the
    `Origin` every browser sends must name the proxy's own origin. Programs send none (or
    their own, which a browser's `Sec-Fetch-Site`, checked first, would have refused)."""
    origin = request.headers.get("Origin")
    if origin is not None and not own_origin(request, origin):
        raise CrossSite(
            "A page of another origin may not open a WebSocket through this proxy: it would "
            "read every message. Serve the page from the proxy's origin, or drop Origin in a "
            "gateway in front that serves other sites' pages on purpose."
        )


UPSTREAM_FAILED = WSCloseCode.BAD_GATEWAY
"""What the client is told when the upstream's side failed without a close code (1014)."""
CLIENT_FAILED = WSCloseCode.GOING_AWAY
"""What the upstream is told when the client's side failed without one (1001)."""


async def _pump(source: Socket, sink: Socket, failed: int, lifecycle: Lifecycle) -> None:
    """Relay `source`'s messages to `sink` until `source` ends, then close `sink` with the code
    `source` closed with, or `failed` when it ended without one; 1001 when the proxy stops
    (`close_all` closed the client's side: what the client replied is no word of its own). A
    `sink` that cannot be written to is gone: `source` is closed as its failure says."""
    while True:
        message = await source.receive()
        kind = message.type
        try:
            if kind is WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif kind is WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            else:
                break
        except ConnectionError:
            gone = CLIENT_FAILED if failed == UPSTREAM_FAILED else UPSTREAM_FAILED
            await source.close(code=gone)
            return
    if kind is WSMsgType.CLOSE:  # the peer's close frame: its code and reason
        code = message.data if message.data in _SENDABLE else WSCloseCode.OK
        reason = (message.extra or "").encode("utf-8")
    elif kind is WSMsgType.ERROR:  # what it sent broke the protocol or the bound
        code, reason = failed, b""
    else:  # closed from this side (by the other direction, or a stop), or the connection lost
        code = source.close_code if source.close_code in _SENDABLE else failed
        reason = b""
    if lifecycle.stopping:
        code, reason = WSCloseCode.GOING_AWAY, STOPPING
    if not sink.closed:
        await sink.close(code=code, message=reason)


def _refusal(refused: WebSocketRefused) -> web.Response:
    """The upstream's own answer to the handshake, as a pass-through relays one; one too long
    to have been kept keeps its status, told in our words."""
    headers = response_headers(refused.headers, decoded=False)
    headers["X-Repro-Cache"] = "BYPASS"
    body = refused.body
    if body is None:
        error = ProxyError(
            f"The upstream refused the WebSocket with status {refused.status}, in an answer "
            "too long to relay."
        )
        error.status, error.type, error.code = refused.status, "upstream_error", "websocket_refused"
        headers.popall("Content-Encoding", None)
        headers["Content-Type"] = "application/json"
        body = error.body()
    return web.Response(status=refused.status, body=body, headers=headers)


async def close_all(services: Services) -> None:
    """A stop closes every session at once (1001), rather than letting the drain cut them: the
    client's side here, the upstream's by its relay (`_pump`)."""
    closing = [
        client.close(code=WSCloseCode.GOING_AWAY, message=STOPPING)
        for client in list(services.lifecycle.tunnels)
    ]
    await asyncio.gather(*closing, return_exceptions=True)
