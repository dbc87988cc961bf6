"""A lean HTTP/1.1 client for the one upstream: pooled keep-alive connections, whole or streamed
answers.

aiohttp's ClientSession spends most of a miss's CPU on machinery the proxy never uses (URL
parsing, cookie, trace and timeout contexts, payload registry, a task per request): measured on
this kind of machine, about 280 us of CPU per keep-alive call, against about 145 us here. This
speaks HTTP/1.1 over one asyncio.Protocol per connection, to the one base URL it was built for.

Framing follows RFC 9112 6.3: no body for HEAD, 1xx, 204 and 304; chunked when it is the last
transfer coding; else Content-Length; else until the server closes. gzip and deflate are decoded
when asked. The read timeout bounds every silence while an answer is awaited, from the request's
last byte to the answer's last (not while the reader itself holds the stream back). A connection
is reused only after a complete answer that allows it, and not once it has idled `IDLE_TTL`
seconds, before the server's own keep-alive timeout is likely to close it under a new request.
Requests are never retried: a POST the server may have seen is the caller's to repeat.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import TypeAlias, cast

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

IDLE_TTL = 15.0
"""Seconds an idle connection stays reusable (aiohttp's keep-alive default)."""
MAX_IDLE = 128
"""Idle connections kept for reuse; past this the oldest is closed."""
CLOSE_WAIT = 1.0
"""Seconds `Pool.close` waits for its sockets to close."""
MAX_HEAD = 64 * 1024
"""Bytes of status line plus headers before an answer is refused as malformed."""
HIGH_WATER = 1024 * 1024
"""Buffered answer bytes at which reading pauses until the caller catches up."""

_NO_BODY_STATUSES = frozenset({204, 304})
_DIGITS = frozenset("0123456789")
_HEX = b"0123456789abcdefABCDEF"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class HTTPError(Exception):
    """The exchange failed below HTTP: no connection, a cut one, or an answer that is not HTTP."""


class ConnectError(HTTPError):
    """No connection could be opened."""


class ConnectionBroken(HTTPError):
    """The connection closed or failed before the answer was complete."""


class ConnectTimeout(TimeoutError):
    """No connection within the connect timeout."""


class MalformedAnswer(HTTPError):
    """The bytes received do not frame an HTTP/1.1 answer."""


class Response:
    """One answer: status and headers at once, the body as it arrives."""

    def __init__(self, connection: _Connection, decode: bool) -> None:
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self._connection = connection
        self._decode = decode
        self._decoder: zlib._Decompress | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").partition(";")[0].strip().lower()

    async def read(self) -> bytes:
        """The whole body; at once when it is all in already (it mostly came with the head)."""
        if self._done:
            body = b"".join(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            return body
        parts = [chunk async for chunk in self.iter_any()]
        return b"".join(parts)

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body in the pieces that have arrived, each as soon as it has."""
        while True:
            if self._chunks:
                chunk = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                self._buffered = 0
                self._connection.consumed()
                yield chunk
                continue
            if self._error is not None:
                raise self._error
            if self._done:
                return
            self._waiter = self._connection.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def release(self) -> None:
        """Done with this answer: an unfinished one closes its connection."""
        if not self._done and self._error is None:
            self._fail(ConnectionBroken("released before the end"))
            self._connection.close()

    def _start(self, status: int, reason: str, headers: CIMultiDict[str]) -> None:
        self.status, self.reason = status, reason
        self.headers = CIMultiDictProxy(headers)
        if self._decode:
            self._decoder = _decoder(headers.get("Content-Encoding", ""))

    def _feed(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as exc:
                raise MalformedAnswer(f"undecodable body: {exc}") from exc
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
            self._wake()

    def _end(self) -> None:
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
            if not self._decoder.eof:
                self._fail(MalformedAnswer("compressed body cut short"))
                return
        self._done = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if not self._done:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _decoder(encoding: str) -> zlib._Decompress | None:
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return None
    if coding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if coding == "deflate":
        return zlib.decompressobj()
    raise MalformedAnswer(f"unsupported Content-Encoding {coding!r}")


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: writes a request, parses its answer as bytes arrive."""

    def __init__(self, pool: Pool) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self._pool = pool
        self._buffer = bytearray()
        self._response: Response | None = None
        self._head: asyncio.Future[Response] | None = None
        self._method = ""
        self._parse = self._parse_head
        self._remaining = 0
        self._keep_alive = False
        self._paused = False
        self._sending = False
        self._drained: asyncio.Future[None] | None = None
        self._heard = 0.0
        self._watch: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._pool.forget(self)
        if not self.lost.done():
            self.lost.set_result(None)
        self._stop_watch()
        if exc is None and self._response is not None and self._parse == self._parse_until_close:
            self._finish()
        else:
            self._broken(ConnectionBroken(type(exc).__name__ if exc else "closed by the server"))
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    async def drain(self) -> None:
        if self.transport is None:
            raise ConnectionBroken("closed while sending the request")
        if self._drained is not None:
            await self._drained

    def close(self) -> None:
        """Close for good; the pool forgets it once the transport reports it closed."""
        if self.transport is not None:
            self.transport.close()
        self._pool.retire(self)

    def begin(self, method: str, decode: bool) -> asyncio.Future[Response]:
        """Expect the answer to a request about to be written; its head resolves the future."""
        self._method = method
        self._response = Response(self, decode)
        self._head = self.loop.create_future()
        self._parse = self._parse_head
        self._sending = True
        return self._head

    def watch(self) -> None:
        """Start bounding silences: the request is written, the answer is due."""
        self._sending = False
        self._arm()

    def _arm(self) -> None:
        """Bound the silence from now on. A timer still pending from an earlier answer on this
        connection serves (`_check` moves on to the latest `_heard`): no timer per request."""
        if self._response is not None:
            self._heard = self.loop.time()
            if self._watch is None:
                self._watch = self.loop.call_at(self._heard + self._pool.read_timeout, self._check)

    def data_received(self, data: bytes) -> None:
        if self._response is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        self._heard = self.loop.time()
        self._buffer += data
        try:
            while self._buffer and self._response is not None and self._parse():
                pass
        except HTTPError as exc:
            self._broken(exc)
            self.close()

    def consumed(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
            self._arm()

    def _parse_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or end > MAX_HEAD:
            if len(self._buffer) > MAX_HEAD:
                raise MalformedAnswer("answer head too large")
            return False
        head = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[: end + 4]
        status, reason, headers, version = _head(head)
        if 100 <= status < 200:
            return True  # interim answer: the real one follows
        assert self._response is not None and self._head is not None
        self._keep_alive = _keeps_alive(version, headers)
        self._response._start(status, reason, headers)
        self._frame(status, headers)
        if not self._head.done():
            self._head.set_result(self._response)
        if self._parse == self._parse_head:  # no body
            self._finish()
        return True

    def _frame(self, status: int, headers: CIMultiDict[str]) -> None:
        if self._method == "HEAD" or status in _NO_BODY_STATUSES:
            return
        codings = ",".join(headers.getall("Transfer-Encoding", []))
        if codings:
            if codings.rpartition(",")[2].strip().lower() == "chunked":
                self._parse = self._parse_chunk_size
            else:
                self._until_close()
            return
        lengths = {v.strip() for v in ",".join(headers.getall("Content-Length", [])).split(",")}
        lengths.discard("")
        if not lengths:
            self._until_close()
            return
        if len(lengths) > 1 or not all(c in _DIGITS for c in next(iter(lengths))):
            raise MalformedAnswer("invalid Content-Length")
        self._remaining = int(lengths.pop())
        self._parse = self._parse_length if self._remaining else self._parse_head

    def _until_close(self) -> None:
        self._keep_alive = False
        self._parse = self._parse_until_close

    def _parse_length(self) -> bool:
        if self._body_part() == 0:
            self._finish()
        return True

    def _body_part(self) -> int:
        """Deliver what has arrived of the `_remaining` body bytes; how many are still due."""
        take = min(self._remaining, len(self._buffer))
        self._deliver(bytes(self._buffer[:take]))
        del self._buffer[:take]
        self._remaining -= take
        return self._remaining

    def _line(self, what: str) -> bytes | None:
        """The next CRLF-terminated line, taken from the buffer; None until it is complete."""
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                raise MalformedAnswer(f"{what} too long")
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _parse_until_close(self) -> bool:
        self._deliver(bytes(self._buffer))
        self._buffer.clear()
        return False

    def _parse_chunk_size(self) -> bool:
        line = self._line("chunk size line")
        if line is None:
            return False
        size = line.partition(b";")[0].strip()
        if not size or size.strip(_HEX):
            raise MalformedAnswer("invalid chunk size")
        self._remaining = int(size, 16)
        self._parse = self._parse_chunk if self._remaining else self._parse_trailers
        return True

    def _parse_chunk(self) -> bool:
        if self._remaining and self._body_part():
            return False
        if len(self._buffer) < 2:
            return False
        if self._buffer[:2] != b"\r\n":
            raise MalformedAnswer("chunk not followed by CRLF")
        del self._buffer[:2]
        self._parse = self._parse_chunk_size
        return True

    def _parse_trailers(self) -> bool:
        line = self._line("trailer line")
        if line is None:
            return False
        if not line:  # the empty line after the trailers
            self._finish()
        return True

    def _deliver(self, data: bytes) -> None:
        if not data:
            return
        response = self._response
        assert response is not None
        response._feed(data)
        if response._buffered >= HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
            self._stop_watch()  # the caller, not the server, is holding the stream back

    def _finish(self) -> None:
        response = self._response
        assert response is not None
        self._response = None
        self._head = None
        response._end()
        if self._paused and self.transport is not None:  # the answer ended as reading paused
            self._paused = False
            self.transport.resume_reading()
        if self._buffer or self._sending or not self._keep_alive or self.transport is None:
            self.close()  # bytes past the answer, answered early, or closing: not reusable
        else:
            self._pool.idle(self)

    def _broken(self, error: HTTPError | TimeoutError) -> None:
        self._stop_watch()
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        if self._response is not None:
            self._response._fail(error)
            self._response = None

    def _check(self) -> None:
        self._watch = None
        if self._response is None:
            return
        quiet = self.loop.time() - self._heard
        if quiet < self._pool.read_timeout:
            self._watch = self.loop.call_at(self._heard + self._pool.read_timeout, self._check)
            return
        self._broken(TimeoutError(f"no data for {self._pool.read_timeout:g} s"))
        self.close()

    def _stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None


def _head(text: str) -> tuple[int, str, CIMultiDict[str], str]:
    lines = text.split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise MalformedAnswer("invalid status line")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise MalformedAnswer("invalid header line")
        headers.add(name, value.strip())
    return int(code), reason, headers, version


def _keeps_alive(version: str, headers: CIMultiDict[str]) -> bool:
    tokens = {t.strip().lower() for v in headers.getall("Connection", []) for t in v.split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


Body: TypeAlias = bytes | AsyncIterable[bytes] | None

_FRAMING = frozenset({"host", "content-length", "transfer-encoding"})


def request_head(
    method: str, target: str, authority: str, headers: Mapping[str, str], body: Body, decode: bool
) -> tuple[bytes, bool]:
    """The request line and headers, and whether the body goes out chunked. Framing is ours:
    a caller's Content-Length only says how long a streamed body will be."""
    if "\n" in target or "\r" in target or " " in target:
        raise ValueError("the request target contains a space or a line break")
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n"]
    length: str | None = None
    encodings = False
    for name, value in headers.items():
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise ValueError(f"header {name!r} contains a line break")
        lower = name.lower()
        encodings = encodings or lower == "accept-encoding"
        if lower in _FRAMING:
            length = value if lower == "content-length" else length
            continue
        lines.append(f"{name}: {value}\r\n")
    if decode and not encodings:
        lines.append("Accept-Encoding: gzip, deflate\r\n")
    chunked = False
    if isinstance(body, bytes):
        length = str(len(body))
    elif body is None:
        length = "0" if method in _BODY_METHODS or length is not None else None
    elif length is None:
        chunked = True
        lines.append("Transfer-Encoding: chunked\r\n")
    if length is not None:
        lines.append(f"Content-Length: {length}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1"), chunked


class Pool:
    """Keep-alive connections to one origin; a request takes the most recently idled one."""

    def __init__(self, base_url: str, connect_timeout: float, read_timeout: float) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) URL: {base_url}")
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self._host = url.host
        self._port = url.port or (443 if url.scheme == "https" else 80)
        host = f"[{url.host}]" if ":" in url.host else url.host
        self._authority = host if url.is_default_port() else f"{host}:{self._port}"
        self._tls = ssl.create_default_context() if url.scheme == "https" else None
        self._idle: list[_Connection] = []  # oldest first
        self._open: set[_Connection] = set()
        self._sweep: asyncio.TimerHandle | None = None

    async def request(
        self, method: str, target: str, headers: Mapping[str, str], body: Body, decode: bool
    ) -> Response:
        """Send one request; returns once the answer's head is in. `target` is path and query."""
        connection = self._take() or await self._connect()
        head = connection.begin(method, decode)
        try:
            await self._send(connection, method, target, headers, body, decode)
            connection.watch()
            return await head
        except BaseException:
            connection.close()
            if not head.cancel() and not head.cancelled():
                head.exception()  # the error raised here supersedes the connection's
            raise

    def idle(self, connection: _Connection) -> None:
        connection.idle_since = connection.loop.time()
        self._idle.append(connection)
        if len(self._idle) > MAX_IDLE:
            self._idle[0].close()
        if self._sweep is None:
            self._sweep = connection.loop.call_at(self._idle[0].idle_since + IDLE_TTL, self._expire)

    def _expire(self) -> None:
        """Close the connections idle for IDLE_TTL, also when no request comes to find them."""
        self._sweep = None
        if not self._idle:
            return
        loop = self._idle[0].loop
        while self._idle and loop.time() - self._idle[0].idle_since >= IDLE_TTL:
            self._idle[0].close()
        if self._idle:
            self._sweep = loop.call_at(self._idle[0].idle_since + IDLE_TTL, self._expire)

    def retire(self, connection: _Connection) -> None:
        """Never hand out this connection again."""
        if connection in self._idle:
            self._idle.remove(connection)

    def forget(self, connection: _Connection) -> None:
        """The connection is closed (its socket too)."""
        self._open.discard(connection)
        self.retire(connection)

    async def close(self) -> None:
        """Close every connection and wait (briefly) until their sockets are closed."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        closing = list(self._open)
        for connection in closing:
            connection.close()
        if closing:
            await asyncio.wait([c.lost for c in closing], timeout=CLOSE_WAIT)

    def _take(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.loop.time() - connection.idle_since < IDLE_TTL:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self),
                    self._host,
                    self._port,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls else None,
                )
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {self.connect_timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(type(exc).__name__) from exc
        self._open.add(connection)
        return connection

    async def _send(
        self,
        connection: _Connection,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: Body,
        decode: bool,
    ) -> None:
        head, chunked = request_head(method, target, self._authority, headers, body, decode)
        transport = connection.transport
        if transport is None:
            raise ConnectionBroken("closed before the request")
        if isinstance(body, bytes):
            transport.write(head + body)
            return
        transport.write(head)
        if body is None:
            return
        async for chunk in body:
            if connection.transport is None:
                raise ConnectionBroken("closed while sending the request")
            if chunk:
                connection.transport.write(
                    b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
                )
                await connection.drain()
        if chunked and connection.transport is not None:
            connection.transport.write(b"0\r\n\r\n")
