"""The one boundary to the upstream: aiohttp's ClientSession, and where its errors become ours.

Nothing else in the proxy imports the HTTP client. Framing is the library's, computed from the
bytes actually sent: a body given as bytes carries its own length; a streamed body either goes
chunked or, when its length is declared, is checked against it on the way (`exact`), so no byte
past a declared length is ever written on a pooled connection.

What comes back is hostile until checked: headers with control characters are dropped, a
`Transfer-Encoding` that is not plain `chunked` (or one beside a `Content-Length`) closes the
connection with a 502, a whole answer is read only up to a size bound and within one deadline
(a slow drip cannot stretch it), and a streamed one only while it keeps sending (informational
answers and bytes that inflate to nothing are silence). A gzip or deflate answer is inflated
here, not by aiohttp, whose client takes a gzip stream cut before its trailer for the whole
answer: one that does not end where its format says is an error. Bytes on a pooled connection
that no request asked for close it (`proxy.upstream.pool`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.core.inflate import CODINGS, Inflater
from proxy.core.tlsreason import tls_reason
from proxy.errors import (
    InvalidBodyLength,
    ProxyError,
    UpstreamTimeout,
    UpstreamTooLarge,
    UpstreamUnreachable,
)
from proxy.upstream import refusal
from proxy.upstream.egress import Egress, tls_context
from proxy.upstream.headers import coding_error, framing_error, safe_headers, status_error
from proxy.upstream.pool import Connector

log = logging.getLogger("proxy.upstream")

MAX_URLS = 256
ANSWER_CODINGS = "gzip, deflate"
"""The answer codings asked for where the answer is read: the ones `UpstreamResponse` inflates.
aiohttp's own default grows with the libraries installed (br with Brotli, zstd on Python 3.14),
to codings the proxy would read as the answer undecoded."""

_CLIENTS_OWN = ("Accept-Encoding", "Accept", "Content-Type")
"""Headers the HTTP client would add on its own (a body labelled `application/octet-stream`,
`Accept: */*`): a pass-through carries the client's, or none at all."""

FETCH_LIMIT = 32 * 1024 * 1024
"""Bytes of an answer to the proxy's own side requests that must be read whole (drift samples,
which compare a whole answer)."""
ANSWER_LIMIT = 64 * 1024
"""Bytes read at most of an answer to a side request that needs its status and a few fields
(start-up check, key check, fingerprint probe: one completion token is a few hundred). Read up
to FETCH_LIMIT and parsed on the event loop, a hostile upstream's answer to each built a quarter
of a GiB of objects while every client waited."""
CLOSE_WAIT = 10.0
"""Seconds a WebSocket's closing waits for the upstream's close frame in reply."""


@dataclass(frozen=True, slots=True)
class StreamedBody:
    """A request body that arrives while it is sent; `length` is the client's declared length,
    or None to send it chunked."""

    chunks: AsyncIterable[bytes]
    length: int | None = None


Body = bytes | StreamedBody | None


async def exact(chunks: AsyncIterable[bytes], length: int) -> AsyncIterator[bytes]:
    """`chunks`, refused before the first byte past `length`, and at the end if short."""
    sent = 0
    async for chunk in chunks:
        sent += len(chunk)
        if sent > length:
            raise InvalidBodyLength(f"The request body is longer than its {length} bytes.")
        yield chunk
    if sent != length:
        raise InvalidBodyLength(f"The request body has {sent} of its {length} bytes.")


UpstreamSocket = aiohttp.ClientWebSocketResponse
"""A WebSocket to the upstream (`Upstream.websocket`), as the relay uses it."""


class UpstreamResponse:
    """One answer: checked status and headers at once, the body as it arrives."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        deadline: float | None = None,
        decode: bool = False,
        silence: float | None = None,
    ) -> None:
        """`deadline`: seconds a whole read may take in all, for an answer to a request sent
        as a stream, whose connection waits only on silences (a whole one has its own).
        `decode`: inflate a gzip or deflate answer. `silence`: seconds an inflated answer may
        go without a byte of it (see `_inflated`)."""
        self._response = response
        self._deadline = deadline
        self._silence = silence
        self.status = response.status
        self.reason = response.reason or ""
        self.headers = safe_headers(response.headers)
        coding = self.headers.get("Content-Encoding", "").strip().lower() if decode else ""
        self._coding = coding if coding in CODINGS else None
        self.end_unchecked = self._coding is not None
        """The body's last bytes may still break its coding: only true of an inflated answer,
        until its compressed stream was seen to end where the body does."""

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").partition(";")[0].strip().lower()

    async def read(self, limit: int) -> bytes:
        """The whole body, at most `limit` bytes (decoded), within the deadline in all: an
        answer read whole is bounded by one deadline however slowly it drips. A plain body
        whose length is declared within the limit is read at once; any other is counted as
        it inflates."""
        if self._deadline is None:
            return await self._read(limit)
        try:
            async with asyncio.timeout(self._deadline):
                return await self._read(limit)
        except TimeoutError as exc:
            raise UpstreamTimeout("The upstream timed out while sending its answer.") from exc

    async def _read(self, limit: int) -> bytes:
        declared = self._response.content_length
        if declared is not None and declared <= limit and "Content-Encoding" not in self.headers:
            try:
                return await self._response.read()
            except Exception as exc:
                _raise_mapped(exc, "while sending its answer")
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise UpstreamTooLarge(
                    f"The upstream's answer is larger than {limit} bytes (--max-entry)."
                )
            parts.append(chunk)
        return b"".join(parts)

    def chunks(self) -> AsyncIterator[bytes]:
        """The body in the pieces that have arrived, inflated if its coding is one the proxy
        reads; a silence longer than the upstream timeout, a broken connection or a compressed
        stream that does not end with the body becomes our error."""
        if self._coding is None:
            return self._received()
        return self._inflated(self._coding)

    async def _inflated(self, coding: str) -> AsyncIterator[bytes]:
        """Compressed bytes that inflate to nothing (empty deflate blocks, a flush without
        data) are silence to whoever reads the answer: the upstream timeout counts from the
        last byte inflated, not the last one received, or blocks dripped for ever would keep
        a stream open with nothing to read, its client and connection held past every bound."""
        inflater = Inflater(coding, UpstreamUnreachable, "The upstream's answer")
        received = self._received()
        loop = asyncio.get_running_loop()
        quiet_until: float | None = None
        while True:
            if quiet_until is None and self._silence is not None:
                quiet_until = loop.time() + self._silence
            try:
                async with asyncio.timeout_at(quiet_until):
                    chunk = await anext(received, None)
            except TimeoutError:
                raise UpstreamTimeout(
                    f"The upstream sent nothing of its answer for {self._silence:g} s, only "
                    "compressed bytes that inflate to nothing."
                ) from None
            if chunk is None:
                break
            for piece in inflater.feed(chunk):
                quiet_until = None
                yield piece
        inflater.finish()
        self.end_unchecked = False

    async def _received(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except Exception as exc:
            _raise_mapped(exc, "while sending its answer")

    def release(self) -> None:
        """Done with this answer: an unfinished one closes its connection, never pooled."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class Upstream:
    """Sends requests to the configured base URL only: bodies never choose the destination."""

    def __init__(
        self,
        base_url: str,
        connect_timeout: float,
        read_timeout: float,
        egress: Egress | None = None,
    ) -> None:
        egress = egress or Egress()
        url = URL(base_url)
        self._origin = url.origin()
        self._base_path = url.raw_path.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._proxy = egress.proxy
        self._tls = tls_context(egress) if url.scheme == "https" else None
        self._connections = egress.connections
        self._session: aiohttp.ClientSession | None = None
        self._websockets: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}
        wait = read_timeout or None
        # A stream is bounded by its silences; a whole answer by one deadline for all of it, so
        # that an upstream dripping a byte at a time cannot stretch it (the waits include one
        # for a free connection under --upstream-connections).
        self._stream_timeout = aiohttp.ClientTimeout(
            sock_read=wait, connect=wait, sock_connect=connect_timeout
        )
        self._whole_timeout = aiohttp.ClientTimeout(
            total=wait, connect=wait, sock_connect=connect_timeout
        )

    def _client(self) -> aiohttp.ClientSession:
        """Built on first use, inside the running loop, as aiohttp requires."""
        if self._session is None:
            connector = Connector(
                limit=self._connections, ssl=self._tls or True, keepalive_timeout=15
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._stream_timeout,
                auto_decompress=False,  # UpstreamResponse inflates, and checks the end
                # One session serves every tenant: a cookie jar would hand one tenant's upstream
                # session to the next. Set-Cookie still reaches the client it was meant for.
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,  # no ~/.netrc credentials added behind the caller's back
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def _websocket_client(self) -> aiohttp.ClientSession:
        """The pool's connections again, with a trace that keeps a refusal's body
        (`proxy.upstream.refusal`), which the requests of `send` do not pay for. No
        Accept-Encoding but the client's own: a refusal is relayed as it comes."""
        if self._websockets is None:
            self._websockets = aiohttp.ClientSession(
                connector=self._client().connector,
                connector_owner=False,
                timeout=self._stream_timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                trace_configs=[refusal.keeping(ANSWER_LIMIT)],
            )
        return self._websockets

    async def websocket(
        self,
        path_qs: str,
        headers: Mapping[str, str],
        protocols: Sequence[str],
        max_message: int,
        heartbeat: float,
    ) -> UpstreamSocket:
        """A WebSocket to the upstream, offering the client's subprotocols; no compression
        (no inflating a peer's frames past `max_message`). The handshake, a refusal's body
        included, is bounded by the upstream timeout; `heartbeat` pings find a dead upstream.
        Raises WebSocketRefused for an answer that is no 101."""
        refusal.forget()
        try:
            async with asyncio.timeout(self.read_timeout or None):
                return await self._websocket_client().ws_connect(
                    self._url(path_qs),
                    headers=headers,
                    protocols=protocols,
                    proxy=self._proxy,
                    max_msg_size=max_message,
                    compress=0,
                    heartbeat=heartbeat,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_WAIT),
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 101 or exc.headers is None:  # a 101 that is no WebSocket's
                raise UpstreamUnreachable(
                    f"The upstream's answer to a WebSocket handshake is not one ({exc.message})."
                ) from None
            raise refusal.refused(exc) from None
        except refusal.WebSocketRefused:  # a redirect, not followed (refusal.keeping)
            raise
        except Exception as exc:
            _raise_mapped(exc, "before opening the WebSocket")

    def target(self, path_qs: str) -> str:
        """Map `/v1/x?q` onto the base URL's path, which carries its own `/v1`."""
        rest = path_qs[3:] if path_qs.startswith("/v1") else path_qs
        return self._base_path + rest

    def aliases(self, path: str) -> tuple[str, ...]:
        """The paths that `target` sends where it sends `path`: under a base without `/v1` (an
        Azure resource's root), `/v1/openai/deployments/...` reaches what the proxy's own
        `/openai/deployments/...` does."""
        rest = self.target(path)[len(self._base_path) :]
        return ("/v1" + rest, rest) if not rest.startswith("/v1") else ("/v1" + rest,)

    def _url(self, path_qs: str) -> URL:
        """The absolute URL of `path_qs`, kept as given (already normalised, still encoded).
        Cacheable routes repeat a handful of paths: those are parsed once."""
        url = self._urls.get(path_qs)
        if url is None:
            url = URL(str(self._origin) + self.target(path_qs), encoded=True)
            if len(self._urls) >= MAX_URLS:
                self._urls.clear()
            self._urls[path_qs] = url
        return url

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        data: Body,
        *,
        decode: bool = True,
        whole: bool = False,
    ) -> UpstreamResponse:
        """The answer's head; failures before it become ours. The caller releases the answer.
        `whole`: the answer will be read at once, and the upstream timeout bounds all of it."""
        payload, headers = _payload(data, headers)
        if decode and "Accept-Encoding" not in headers:
            headers = CIMultiDict(headers)
            headers["Accept-Encoding"] = ANSWER_CODINGS
        try:
            response = await self._client().request(
                method,
                self._url(path_qs),
                headers=headers,
                data=payload,
                allow_redirects=False,
                skip_auto_headers=None if decode else _CLIENTS_OWN,
                proxy=self._proxy,
                timeout=self._whole_timeout if whole else self._stream_timeout,
            )
        except Exception as exc:
            _raise_mapped(exc, "before answering")
        problem = (
            status_error(response.status)
            or framing_error(response.headers)
            or (decode and coding_error(response.headers))
        )
        if problem:
            response.close()
            raise UpstreamUnreachable(f"The upstream's answer has {problem}; connection closed.")
        deadline = None if whole else self.read_timeout or None
        return UpstreamResponse(response, deadline, decode, self.read_timeout or None)

    async def fetch(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        data: Body,
        limit: int = FETCH_LIMIT,
    ) -> tuple[int, bytes]:
        """Status and whole body of one answer, for the proxy's own side requests."""
        response = await self.send(method, path_qs, headers, data, whole=True)
        try:
            return response.status, await response.read(limit)
        finally:
            response.release()

    async def close(self) -> None:
        if self._websockets is not None:
            await self._websockets.close()
        if self._session is not None:
            await self._session.close()


def _payload(data: Body, headers: Mapping[str, str]) -> tuple[object, Mapping[str, str]]:
    """What aiohttp sends, and the headers that frame it: a streamed body with a declared
    length is checked against it, one without goes chunked."""
    if not isinstance(data, StreamedBody):
        return data, headers
    if data.length is None:
        return data.chunks, headers
    framed = CIMultiDict(headers)
    framed["Content-Length"] = str(data.length)
    return exact(data.chunks, data.length), framed


PLAIN_HTTP_HINT = " (what a server speaking plain HTTP answers: does --upstream mean http://?)"
"""OpenSSL's reason when the first bytes back are no TLS record: an https:// base URL given
for a plain server (the sim, a local gateway) is the usual cause."""


def _raise_mapped(exc: BaseException, when: str) -> NoReturn:
    """aiohttp's errors, and timeouts, become ours; a refusal of our own (a client body that
    broke its length or limit) surfaces as itself."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ProxyError):
            raise cause from None
        cause = cause.__cause__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        raise UpstreamTimeout(
            "No upstream connection in time (--connect-timeout, or every one of "
            "--upstream-connections busy for --upstream-timeout)."
        ) from exc
    if isinstance(exc, TimeoutError):
        raise UpstreamTimeout(f"The upstream timed out {when}.") from exc
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        raise UpstreamUnreachable(f"Could not resolve the upstream host {exc.host}.") from exc
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        why = tls_reason(exc.certificate_error) or exc.certificate_error
        raise UpstreamUnreachable(
            f"The upstream's TLS certificate is not trusted ({exc.host}:{exc.port}): {why}."
        ) from exc
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        why = tls_reason(exc.os_error) or type(exc.os_error).__name__
        plain = PLAIN_HTTP_HINT if why == "wrong version number" else ""
        raise UpstreamUnreachable(
            f"No TLS with the upstream ({exc.host}:{exc.port}): {why}{plain}."
        ) from exc
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        raise UpstreamUnreachable(f"Could not connect to the forward proxy: {exc}.") from exc
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        raise UpstreamUnreachable(f"The forward proxy refused: {exc.status}.") from exc
    if isinstance(exc, aiohttp.ClientConnectorError):
        # aiohttp's own text reads 'Cannot connect to host H:P ssl:default [Connect call
        # failed (...)]', TLS named for a plain http:// upstream and the cause left unsaid.
        errno = exc.os_error.errno
        why = os.strerror(errno) if errno else str(exc.os_error)
        raise UpstreamUnreachable(
            f"Could not connect to the upstream ({exc.host}:{exc.port}): {why}."
        ) from exc
    if isinstance(exc, aiohttp.ClientError | OSError | ValueError):
        raise UpstreamUnreachable(
            f"The upstream connection broke {when}: {type(exc).__name__}."
        ) from exc
    raise exc
