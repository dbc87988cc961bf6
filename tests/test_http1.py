"""proxy.http1 against a scripted server on 127.0.0.1.

Each test writes the exact bytes of its answers, so every framing edge case is the one intended,
and the server counts the connections it accepts and keeps the bytes each one received.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import ipaddress
import random
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict

from proxy import http1
from proxy.http1 import (
    ConnectError,
    ConnectionBroken,
    ConnectTimeout,
    HTTPError,
    MalformedAnswer,
    Pool,
    Response,
)

PEER_TIMEOUT = 5.0
"""Bound on every wait of the scripted server."""
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Request:
    """One request as the server read it."""

    line: str
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Peer:
    """The server's end of one accepted connection."""

    def __init__(
        self, server: Server, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.index = index
        self.reader = reader
        self.writer = writer
        self.raw = bytearray()
        """Every byte the client sent on this connection."""
        self.requests: list[Request] = []
        self.eof = asyncio.Event()
        """Set once the client's end is seen closed."""

    async def request(self) -> Request | None:
        """The next request, or None when the client closes instead."""
        async with asyncio.timeout(PEER_TIMEOUT):
            try:
                head = await self.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                self.raw += exc.partial
                if exc.partial:
                    raise
                self.eof.set()
                return None
            self.raw += head
            lines = head[:-4].decode("latin-1").split("\r\n")
            headers = [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
            request = Request(lines[0], headers, b"")
            codings = request.values("Transfer-Encoding")
            if codings and codings[-1].lower() == "chunked":
                request.body = await self._chunked()
            elif request.values("Content-Length"):
                request.body = await self._exactly(int(request.values("Content-Length")[0]))
        self.requests.append(request)
        self.server.requests.append(request)
        return request

    async def _exactly(self, n: int) -> bytes:
        data = await self.reader.readexactly(n)
        self.raw += data
        return data

    async def _line(self) -> bytes:
        line = await self.reader.readuntil(b"\r\n")
        self.raw += line
        return line

    async def _chunked(self) -> bytes:
        body = bytearray()
        for _ in range(100_000):
            size = int(bytes(await self._line()).partition(b";")[0], 16)
            if size == 0:
                for _ in range(100):
                    if await self._line() == b"\r\n":
                        return bytes(body)
                raise AssertionError("endless trailers")
            chunk = await self._exactly(size + 2)
            assert chunk.endswith(b"\r\n"), chunk
            body += chunk[:-2]
        raise AssertionError("endless chunks")

    async def send(self, *pieces: bytes, pause: float = 0.0) -> None:
        """Write each piece on its own, `pause` seconds apart."""
        for i, piece in enumerate(pieces):
            if i and pause:
                await asyncio.sleep(pause)
            self.writer.write(piece)
            await self.writer.drain()

    async def wait_eof(self) -> None:
        """Read (and keep) whatever else comes until the client closes, bounded."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PEER_TIMEOUT):
                for _ in range(10_000):
                    data = await self.reader.read(65536)
                    if not data:
                        self.eof.set()
                        return
                    self.raw += data


Handler = Callable[[Peer], Awaitable[None]]


class Server:
    """A scripted HTTP server: `handler` drives each accepted connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.peers: list[Peer] = []
        self.requests: list[Request] = []
        self.errors: list[BaseException] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        return len(self.peers)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(self, len(self.peers), reader, writer)
        self.peers.append(peer)
        try:
            await self.handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        except Exception as exc:
            self.errors.append(exc)
        finally:
            writer.close()
            try:
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            except (TimeoutError, ConnectionError, asyncio.CancelledError):
                writer.transport.abort()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        if self.errors:
            raise self.errors[0]


def canned(answer: bytes | Callable[[Peer, Request], bytes], requests: int = 10) -> Handler:
    """Answer each request on a connection with `answer`, never closing first."""

    async def handle(peer: Peer) -> None:
        for _ in range(requests):
            request = await peer.request()
            if request is None:
                return
            await peer.send(answer(peer, request) if callable(answer) else answer)
        await peer.wait_eof()

    return handle


@contextlib.asynccontextmanager
async def serving(
    handler: Handler, read_timeout: float = 2.0
) -> AsyncIterator[tuple[Server, Pool]]:
    server = Server(handler)
    await server.start()
    pool = Pool(server.url, connect_timeout=2.0, read_timeout=read_timeout)
    try:
        yield server, pool
    finally:
        await pool.close()
        await server.close()


async def get(pool: Pool, target: str = "/", decode: bool = False) -> Response:
    return await pool.request("GET", target, {}, None, decode)


async def fetch(pool: Pool, target: str = "/", decode: bool = False) -> bytes:
    response = await get(pool, target, decode)
    try:
        return await response.read()
    finally:
        response.release()


async def seen_eof(peer: Peer) -> bool:
    """Whether the client closes this connection within a second (sooner than the default read
    timeout, so a close by the timeout cannot pass for the one under test)."""
    return await seen_eof_within(peer, 1.0)


async def seen_eof_within(peer: Peer, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await peer.eof.wait()
    except TimeoutError:
        return False
    return True


# -- framing and keep-alive ------------------------------------------------------------------


async def test_content_length_body_and_one_connection_for_sequential_requests() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: Application/JSON; charset=utf-8\r\n"
        b"X-Twice: a\r\nX-Twice: b\r\nContent-Length: 11\r\n\r\nhello world"
    )
    async with serving(canned(answer)) as (server, pool):
        for _ in range(2):
            response = await get(pool)
            assert (response.status, response.reason) == (200, "OK")
            assert response.content_type == "application/json"
            assert response.headers["content-length"] == "11"
            assert response.headers.getall("X-Twice") == ["a", "b"]
            assert await response.read() == b"hello world"
            response.release()
        assert server.connections == 1
        assert [r.line for r in server.requests] == ["GET / HTTP/1.1"] * 2


@pytest.mark.parametrize(
    ("answer", "connections"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", 2),
        (b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 2\r\n\r\nok", 2),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 2),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", 1),
    ],
    ids=["close", "close-among-tokens", "http1.0", "http1.0-keep-alive"],
)
async def test_an_answer_that_does_not_keep_alive_is_not_reused(
    answer: bytes, connections: int
) -> None:
    # The server would answer again on the same connection: only the client's choice counts.
    async with serving(canned(answer)) as (server, pool):
        assert await fetch(pool) == b"ok"
        assert await fetch(pool) == b"ok"
        assert server.connections == connections
        if connections == 2:
            assert await seen_eof(server.peers[0])  # the client closed the first one
            assert len(server.peers[0].requests) == 1


async def test_chunked_body_with_extension_and_trailers_split_across_writes() -> None:
    pieces = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5;fo",
        b"o=bar\r",
        b"\nhel",
        b"lo\r",
        b"\n",
        b"1",
        b"0\r\n, chunked world!",
        b"\r\n0",
        b"\r\nX-Trailer: 1\r",
        b"\nX-Other: 2\r\n\r",
        b"\n",
    ]

    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(*pieces, pause=0.02)
        await canned(OK)(peer)

    async with serving(handle) as (server, pool):
        response = await get(pool)
        assert response.status == 200
        assert await response.read() == b"hello, chunked world!"
        assert "X-Trailer" not in response.headers
        # the trailers were consumed exactly: the connection serves the next answer
        assert await fetch(pool) == b"ok"
        assert server.connections == 1


async def test_body_framed_by_close_is_read_to_the_end_and_not_reused() -> None:
    async def handle(peer: Peer) -> None:
        if peer.index > 0:
            return await canned(OK)(peer)
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"the close", pause=0.05)
        # returning closes the connection, which ends the body

    async with serving(handle) as (server, pool):
        response = await get(pool)
        assert response.status == 200
        assert await response.read() == b"until the close"
        assert await fetch(pool) == b"ok"
        assert server.connections == 2


async def test_no_body_for_204_304_and_head_and_the_connection_is_reused() -> None:
    def answer(peer: Peer, request: Request) -> bytes:
        if request.line.startswith("HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"
        if request.line.startswith("GET /204"):
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if request.line.startswith("GET /304"):
            return b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5000\r\n\r\n"
        return OK

    async with serving(canned(answer), read_timeout=1.0) as (server, pool):
        response = await get(pool, "/204")
        assert response.status == 204
        assert await response.read() == b""
        response = await pool.request("HEAD", "/", {}, None, False)
        assert (response.status, response.headers["Content-Length"]) == (200, "5000")
        assert await response.read() == b""
        response = await get(pool, "/304")
        assert (response.status, response.reason) == (304, "Not Modified")
        assert await response.read() == b""
        assert await fetch(pool) == b"ok"
        assert server.connections == 1
        assert len(server.requests) == 4


async def test_interim_answers_are_skipped() -> None:
    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\nHTTP/1.1 201 Created\r\n",
            b"Content-Length: 4\r\n\r\ndone",
            pause=0.03,
        )
        await canned(OK)(peer)

    async with serving(handle) as (server, pool):
        response = await pool.request("POST", "/", {}, b"x", False)
        assert (response.status, response.reason) == (201, "Created")
        assert "Link" not in response.headers
        assert await response.read() == b"done"
        assert await fetch(pool) == b"ok"
        assert server.connections == 1


# -- content codings -------------------------------------------------------------------------

PLAIN = b'{"text": "' + b"compressible " * 200 + b'"}'
COMPRESSED = {"gzip": gzip.compress(PLAIN), "deflate": zlib.compress(PLAIN)}


def encoded_answer(coding: str, data: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n"
    return head % (coding.encode(), len(data)) + data


@pytest.mark.parametrize("decode", [True, False])
@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_compressed_bodies_are_decoded_only_when_asked(coding: str, decode: bool) -> None:
    data = COMPRESSED[coding]
    answer = encoded_answer(coding, data)
    async with serving(canned(answer)) as (server, pool):
        response = await get(pool, decode=decode)
        assert response.headers["Content-Encoding"] == coding
        assert await response.read() == (PLAIN if decode else data)
        assert server.requests[0].values("Accept-Encoding") == (["gzip, deflate"] if decode else [])


async def test_gzip_body_in_pieces_over_chunked_framing_is_decoded() -> None:
    data = COMPRESSED["gzip"]
    parts = [data[:7], data[7:50], data[50:]]
    chunks = [b"%x\r\n%s\r\n" % (len(p), p) for p in parts]

    async def handle(peer: Peer) -> None:
        await peer.request()
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
        await peer.send(head, *chunks, b"0\r\n\r\n", pause=0.02)
        await peer.wait_eof()

    async with serving(handle) as (_, pool):
        assert await fetch(pool, decode=True) == PLAIN


async def test_a_callers_accept_encoding_is_sent_alone() -> None:
    async with serving(canned(OK)) as (server, pool):
        response = await pool.request("GET", "/", {"Accept-Encoding": "identity"}, None, True)
        assert await response.read() == b"ok"
        assert server.requests[0].values("Accept-Encoding") == ["identity"]


async def test_an_unsupported_content_encoding_is_malformed_when_decoding() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 4\r\n\r\n\x0b\x01\x80\x03"
    async with serving(canned(answer)) as (server, pool):
        with pytest.raises(MalformedAnswer):
            await get(pool, decode=True)
        # without decoding the bytes pass as they are
        assert await fetch(pool, decode=False) == b"\x0b\x01\x80\x03"
        assert server.connections == 2


async def test_an_undecodable_gzip_body_is_malformed() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 9\r\n\r\nnot gzip!"
    async with serving(canned(answer)) as (_, pool):
        response = await get(pool, decode=True)
        with pytest.raises(MalformedAnswer):
            await response.read()


# -- malformed and cut answers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"ICY 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok!",
        # a latin-1 superscript two: str.isdigit() says yes, int() says no
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nok",
    ],
    ids=[
        "garbage",
        "not-http",
        "four-digit-status",
        "header-without-colon",
        "length-not-a-number",
        "length-negative",
        "length-signed",
        "lengths-conflicting",
        "lengths-conflicting-in-one",
        "length-superscript-digit",
    ],
)
async def test_malformed_heads_raise_malformed_answer(answer: bytes) -> None:
    async with serving(canned(answer)) as (server, pool):
        with pytest.raises(HTTPError) as caught:
            await get(pool)
        assert type(caught.value) is MalformedAnswer, repr(caught.value)
        assert await seen_eof(server.peers[0])  # the connection is dropped


async def test_a_head_over_the_limit_is_malformed_even_in_one_read() -> None:
    filler = b"X-Filler: " + b"f" * (http1.MAX_HEAD + 10) + b"\r\n"
    answer = b"HTTP/1.1 200 OK\r\n" + filler + b"Content-Length: 2\r\n\r\nok"
    async with serving(canned(answer)) as (_, pool):
        with pytest.raises(MalformedAnswer):
            await get(pool)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compressed_body_cut_short_inside_complete_framing_is_malformed(
    coding: str,
) -> None:
    data = COMPRESSED[coding][:-6]
    answer = encoded_answer(coding, data)
    async with serving(canned(answer)) as (_, pool):
        response = await get(pool, decode=True)
        with pytest.raises(MalformedAnswer):
            await response.read()


async def test_a_callers_accept_encoding_in_any_case_is_sent_alone() -> None:
    async with serving(canned(OK)) as (server, pool):
        response = await pool.request("GET", "/", {"accept-encoding": "identity"}, None, True)
        assert await response.read() == b"ok"
        assert server.requests[0].values("Accept-Encoding") == ["identity"]


@pytest.mark.parametrize("target", ["/a b", "/a\r\nX-Injected: 1", "/a\nb"])
async def test_a_target_with_a_space_or_line_break_is_refused(target: str) -> None:
    async with serving(canned(OK)) as (server, pool):
        with pytest.raises(ValueError):
            await pool.request("GET", target, {}, None, False)
        assert server.requests == []


async def test_equal_repeated_content_lengths_are_accepted() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\nok"
    async with serving(canned(answer)) as (server, pool):
        assert await fetch(pool) == b"ok"
        assert await fetch(pool) == b"ok"
        assert server.connections == 1


@pytest.mark.parametrize(
    "chunks",
    [
        b"zz\r\nhello\r\n",
        b"5\r\nhelloXX",
        b"-2\r\nhello\r\n",
        b"0x5\r\nhello\r\n",
        b"+5\r\nhello\r\n",
        b"0_5\r\nhello\r\n",
        b"\r\nhello\r\n",
        b"0\r\n" + b"X-Trailer: " + b"t" * (http1.MAX_HEAD + 10),
    ],
    ids=[
        "not-hex",
        "no-crlf-after-data",
        "negative-size",
        "hex-prefix",
        "signed-size",
        "underscore",
        "empty-size",
        "endless-trailer",
    ],
)
async def test_bad_chunk_framing_raises_malformed_answer(chunks: bytes) -> None:
    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
        await asyncio.sleep(0.1)
        await peer.send(b"0\r\n\r\n")  # a well-formed end, in case the bad part went unnoticed
        await peer.wait_eof()

    async with serving(handle) as (_, pool):
        response = await get(pool)
        assert response.status == 200
        with pytest.raises(HTTPError) as caught:
            body = await response.read()
            pytest.fail(f"read() returned {body!r}")
        assert type(caught.value) is MalformedAnswer, repr(caught.value)


@pytest.mark.parametrize(
    ("answer", "sent"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"0123456789"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"a\r\n0123456789\r\n"),
    ],
    ids=["content-length", "chunked"],
)
async def test_a_body_cut_short_raises_connection_broken(answer: bytes, sent: bytes) -> None:
    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer, sent, pause=0.02)  # then close

    async with serving(handle) as (_, pool):
        response = await get(pool)
        assert response.status == 200
        received = bytearray()
        with pytest.raises(ConnectionBroken):
            async for chunk in response.iter_any():
                received += chunk
        assert received == b"0123456789"


async def test_a_close_before_the_answer_raises_connection_broken() -> None:
    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 O")

    async with serving(handle) as (_, pool):
        with pytest.raises(ConnectionBroken):
            await get(pool)


# -- timeouts --------------------------------------------------------------------------------


async def test_a_server_that_never_answers_times_out_after_the_read_timeout() -> None:
    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.wait_eof()

    async with serving(handle, read_timeout=0.3) as (server, pool):
        started = time.monotonic()
        with pytest.raises(TimeoutError) as caught:
            await get(pool)
        elapsed = time.monotonic() - started
        assert not isinstance(caught.value, ConnectTimeout)
        assert 0.25 < elapsed < 5.0
        assert await seen_eof(server.peers[0])


async def test_a_body_that_stalls_times_out_in_read() -> None:
    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await peer.wait_eof()

    async with serving(handle, read_timeout=0.3) as (server, pool):
        response = await get(pool)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await response.read()
        assert 0.25 < time.monotonic() - started < 5.0
        assert await seen_eof(server.peers[0])


async def test_the_read_timeout_bounds_each_silence_not_the_whole_answer() -> None:
    body = b"slow answer!"

    async def handle(peer: Peer) -> None:
        await peer.request()
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
        pieces = [head[:10], head[10:], *(body[i : i + 1] for i in range(len(body)))]
        await peer.send(*pieces, pause=0.1)
        await peer.wait_eof()

    async with serving(handle, read_timeout=0.3) as (_, pool):
        started = time.monotonic()
        response = await get(pool)
        assert await response.read() == body
        assert time.monotonic() - started > 1.0  # more than three read timeouts in all


# -- connecting ------------------------------------------------------------------------------


async def test_a_refused_connection_raises_connect_error_naming_only_the_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = Pool(f"http://127.0.0.1:{port}", connect_timeout=2.0, read_timeout=1.0)
    try:
        with pytest.raises(ConnectError) as caught:
            await get(pool)
        assert str(caught.value) == "ConnectionRefusedError"
        assert isinstance(caught.value, HTTPError)
    finally:
        await pool.close()


# -- requests on the wire --------------------------------------------------------------------


async def test_a_request_with_a_bytes_body_on_the_wire() -> None:
    async with serving(canned(OK)) as (server, pool):
        headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}
        response = await pool.request("POST", "/v1/x?a=1", headers, b'{"a": 1}', False)
        assert await response.read() == b"ok"
        request = server.requests[0]
        assert request.line == "POST /v1/x?a=1 HTTP/1.1"
        assert request.headers[0] == ("Host", f"127.0.0.1:{server.port}")
        assert request.values("Host") == [f"127.0.0.1:{server.port}"]
        assert request.values("Authorization") == ["Bearer k"]
        assert request.values("Content-Type") == ["application/json"]
        assert request.values("Content-Length") == ["8"]
        assert request.values("Transfer-Encoding") == []
        assert request.values("Accept-Encoding") == []
        assert request.body == b'{"a": 1}'
        assert server.peers[0].raw.endswith(b'\r\n\r\n{"a": 1}')


async def test_repeated_header_values_are_all_sent() -> None:
    async with serving(canned(OK)) as (server, pool):
        headers = CIMultiDict([("X-Many", "1"), ("X-Many", "2")])
        assert await (await pool.request("GET", "/", headers, None, False)).read() == b"ok"
        assert server.requests[0].values("X-Many") == ["1", "2"]


@pytest.mark.parametrize(
    ("method", "length"),
    [("POST", ["0"]), ("PUT", ["0"]), ("PATCH", ["0"]), ("GET", []), ("DELETE", [])],
)
async def test_a_request_without_a_body(method: str, length: list[str]) -> None:
    async with serving(canned(OK)) as (server, pool):
        assert await (await pool.request(method, "/", {}, None, False)).read() == b"ok"
        request = server.requests[0]
        assert request.line == f"{method} / HTTP/1.1"
        assert request.values("Content-Length") == length
        assert request.values("Transfer-Encoding") == []
        assert server.peers[0].raw.endswith(b"\r\n\r\n")
        assert await fetch(pool) == b"ok"  # nothing stray followed the head
        assert server.connections == 1


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0.01)
        yield part


async def test_a_streamed_body_without_a_length_goes_out_chunked() -> None:
    async with serving(canned(OK)) as (server, pool):
        body = pieces(b"first ", b"", b"second ", b"x" * 70_000)
        assert await (await pool.request("POST", "/up", {}, body, False)).read() == b"ok"
        request = server.requests[0]
        assert request.values("Transfer-Encoding") == ["chunked"]
        assert request.values("Content-Length") == []
        assert request.body == b"first second " + b"x" * 70_000
        assert await fetch(pool) == b"ok"
        assert server.connections == 1


async def test_a_streamed_body_with_a_callers_length_goes_out_raw() -> None:
    async with serving(canned(OK)) as (server, pool):
        headers = CIMultiDict({"Content-Length": "12"})
        body = pieces(b"first ", b"", b"second")
        response = await pool.request("PUT", "/up", headers, body, False)
        assert await response.read() == b"ok"
        request = server.requests[0]
        assert request.values("Content-Length") == ["12"]
        assert request.values("Transfer-Encoding") == []
        assert request.body == b"first second"
        assert server.peers[0].raw.endswith(b"\r\n\r\nfirst second")


async def test_framing_headers_are_the_clients_own() -> None:
    async with serving(canned(OK)) as (server, pool):
        headers = {
            "host": "elsewhere.example",
            "Content-Length": "999",
            "transfer-encoding": "chunked",
            "X-Kept": "1",
        }
        assert await (await pool.request("POST", "/", headers, b"abc", False)).read() == b"ok"
        # a streamed body takes its length from the caller, whatever the header's case
        body = pieces(b"ab", b"cd")
        response = await pool.request("POST", "/", {"content-length": "4"}, body, False)
        assert await response.read() == b"ok"
        first, second = server.requests
        assert first.values("Host") == [f"127.0.0.1:{server.port}"]
        assert first.values("Content-Length") == ["3"]
        assert first.values("Transfer-Encoding") == []
        assert first.values("X-Kept") == ["1"]
        assert first.body == b"abc"
        assert second.values("Content-Length") == ["4"]
        assert second.values("Transfer-Encoding") == []
        assert second.body == b"abcd"
        assert server.connections == 1


@pytest.mark.parametrize(
    "headers",
    [{"X-Evil": "a\r\nInjected: yes"}, {"X-Evil": "a\nb"}, {"X-Evil\r\nInjected": "yes"}],
    ids=["crlf-in-value", "lf-in-value", "crlf-in-name"],
)
async def test_a_line_break_in_a_header_raises_value_error_and_sends_nothing(
    headers: dict[str, str],
) -> None:
    async with serving(canned(OK)) as (server, pool):
        assert await fetch(pool) == b"ok"
        sent = bytes(server.peers[0].raw)
        with pytest.raises(ValueError):
            await pool.request("GET", "/next", headers, None, False)
        assert await seen_eof(server.peers[0])
        assert server.peers[0].raw == sent  # not a byte of the refused request
        assert await fetch(pool) == b"ok"  # the pool still works, on a new connection
        assert [p.raw.count(b"Injected") for p in server.peers] == [0, 0]


# -- flow control ----------------------------------------------------------------------------


def big_answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def test_a_large_body_read_slowly_arrives_whole_in_bounded_pieces() -> None:
    body = random.Random(7).randbytes(4 * 1024 * 1024)
    async with serving(canned(big_answer(body))) as (server, pool):
        response = await get(pool)
        received = bytearray()
        sizes = []
        async for chunk in response.iter_any():
            received += chunk
            sizes.append(len(chunk))
            await asyncio.sleep(0.02)
            assert len(sizes) < 10_000
        assert received == body
        # reading paused near HIGH_WATER rather than buffering the whole body
        assert max(sizes) < 2 * http1.HIGH_WATER
        assert await fetch(pool) == body
        assert server.connections == 1


async def test_a_slow_reader_is_not_a_server_timeout() -> None:
    body = random.Random(8).randbytes(2 * 1024 * 1024 + 512 * 1024)
    async with serving(canned(big_answer(body)), read_timeout=0.3) as (_, pool):
        response = await get(pool)
        received = bytearray()
        steps = 0
        for steps in range(100):  # noqa: B007
            got = [chunk async for chunk in _first(response)]
            if not got:
                break
            received += got[0]
            await asyncio.sleep(0.5)  # longer than the read timeout: the reader's own pause
        assert received == body
        assert steps >= 2  # the reader paused while the answer was still coming


async def test_the_read_timeout_applies_again_once_the_reader_catches_up() -> None:
    declared, sent = 2 * http1.HIGH_WATER, 3 * http1.HIGH_WATER // 2

    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % declared + b"x" * sent)
        await peer.wait_eof()  # and the rest never comes

    async with serving(handle, read_timeout=0.3) as (_, pool):
        response = await get(pool)
        received = bytearray()

        async def drain() -> None:
            async for chunk in response.iter_any():
                received.extend(chunk)
                await asyncio.sleep(0.4)  # the reader's pause, not the server's silence

        task = asyncio.create_task(drain())
        done, _ = await asyncio.wait({task}, timeout=5.0)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            pytest.fail("no read timeout after the reader caught up with a silent server")
        assert isinstance(task.exception(), TimeoutError)
        assert len(received) == sent


async def _first(response: Response) -> AsyncIterator[bytes]:
    """At most one piece of the body: the slow reader's single step."""
    async for chunk in response.iter_any():
        yield chunk
        return


async def test_an_unread_complete_answer_does_not_stall_its_reused_connection() -> None:
    # The whole body arrives with the bytes that reach HIGH_WATER: reading pauses, the answer
    # is complete, and its connection goes back to the pool; the caller releases it unread.
    body = b"x" * http1.HIGH_WATER
    sent = asyncio.Event()

    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(big_answer(body))
        sent.set()
        await canned(OK)(peer)

    async with serving(handle, read_timeout=0.5) as (_, pool):
        response = await get(pool)
        await asyncio.wait_for(sent.wait(), 2.0)
        await asyncio.sleep(0.2)  # let every byte arrive
        response.release()
        assert await fetch(pool) == b"ok"


# -- connection reuse ------------------------------------------------------------------------


async def first_unfinished(peer: Peer) -> None:
    """The first connection's answer stops 90 bytes short; the others answer OK."""
    await peer.request()
    if peer.index == 0:
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await peer.wait_eof()
        return
    await peer.send(OK)
    await canned(OK)(peer)


async def test_releasing_an_unfinished_answer_closes_its_connection() -> None:
    async with serving(first_unfinished) as (server, pool):
        response = await get(pool)
        await asyncio.sleep(0.05)
        response.release()
        with pytest.raises(ConnectionBroken):
            await response.read()
        assert await seen_eof(server.peers[0])
        # the next request opens a new connection; a fully read answer's one is reused
        for _ in range(3):
            response = await get(pool)
            assert await response.read() == b"ok"
            response.release()
        assert server.connections == 2
        assert len(server.peers[1].requests) == 3


async def test_an_idle_connection_closed_by_the_server_is_not_reused() -> None:
    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)  # keep-alive by default, closed all the same

    async with serving(handle) as (server, pool):
        assert await fetch(pool) == b"ok"
        await asyncio.sleep(0.1)  # the client sees the close
        assert await fetch(pool) == b"ok"
        assert server.connections == 2


@pytest.mark.parametrize("later", [False, True], ids=["same-write", "later-write"])
async def test_bytes_past_the_answer_make_the_connection_unusable(later: bool) -> None:
    second = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray"

    async def handle(peer: Peer) -> None:
        if peer.index > 0:
            return await canned(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")(peer)
        await peer.request()
        if later:
            await peer.send(OK, second, pause=0.1)
        else:
            await peer.send(OK + second)
        await peer.wait_eof()

    async with serving(handle) as (server, pool):
        assert await fetch(pool) == b"ok"
        await asyncio.sleep(0.2)
        assert await fetch(pool) == b"fresh"
        assert server.connections == 2
        assert await seen_eof(server.peers[0])


async def test_an_idle_connection_past_the_ttl_is_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http1, "IDLE_TTL", 0.2)
    async with serving(canned(OK)) as (server, pool):
        assert await fetch(pool) == b"ok"
        assert await fetch(pool) == b"ok"
        assert server.connections == 1
        await asyncio.sleep(0.4)
        assert await fetch(pool) == b"ok"
        assert server.connections == 2
        assert await seen_eof(server.peers[0])  # the stale one was closed, not leaked


async def test_an_idle_connection_is_closed_after_the_ttl_without_another_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http1, "IDLE_TTL", 0.2)
    async with serving(canned(OK)) as (server, pool):
        assert await fetch(pool) == b"ok"
        await asyncio.sleep(0.1)
        assert await fetch(pool) == b"ok"  # idle again from here: its TTL starts over
        assert server.connections == 1
        assert not await seen_eof_within(server.peers[0], 0.1)
        assert await seen_eof(server.peers[0])
        assert await fetch(pool) == b"ok"  # the pool still serves, on a new connection
        assert server.connections == 2


async def test_closing_the_pool_closes_idle_and_busy_connections() -> None:
    async with serving(first_unfinished) as (server, pool):
        busy = await get(pool)  # holds the first connection
        assert await fetch(pool) == b"ok"  # the second one, now idle
        assert server.connections == 2
        await pool.close()
        assert await seen_eof(server.peers[0])
        assert await seen_eof(server.peers[1])
        with pytest.raises(ConnectionBroken):
            await busy.read()


# -- TLS -------------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, signed by its own key, and that key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "repro-proxy test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_verifies_the_server_and_reuses_the_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    server = Server(canned(OK))
    await server.start(tls)
    url = f"https://127.0.0.1:{server.port}"
    try:
        untrusting = Pool(url, connect_timeout=2.0, read_timeout=2.0)
        with pytest.raises(ConnectError, match="SSLCertVerificationError"):
            await get(untrusting)
        await untrusting.close()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # read when the pool makes its context
        pool = Pool(url, connect_timeout=2.0, read_timeout=2.0)
        assert await fetch(pool) == b"ok"
        assert await fetch(pool) == b"ok"
        await pool.close()
        requests = server.requests
        assert [r.line for r in requests] == ["GET / HTTP/1.1", "GET / HTTP/1.1"]
        assert requests[0].values("Host") == [f"127.0.0.1:{server.port}"]
        assert server.connections == 1  # both requests on one (a refused handshake never counts)
    finally:
        await server.close()
