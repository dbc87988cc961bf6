"""Slow and greedy clients against a real proxy: slowloris heads, silent bodies, too many
connections, and the descriptor limit. The attacking client is a raw socket on loopback."""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from pathlib import Path

import orjson
import pytest

from bench.procs import settled
from tests.fixtures_procs import Proxy, ProxyFactory, Sim, running_proxy
from tests.hostile import Received, Scripted, Writer, fixed, http_answer

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"


def connect(proxy: Proxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """One whole answer whose body has a Content-Length (bounded by the socket's timeout)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def dribble_until_closed(sock: socket.socket, data: bytes, every: float, within: float) -> float:
    """Send `data` a byte at a time; the seconds until the proxy closed the connection."""
    started = time.monotonic()
    for byte in data:
        if time.monotonic() - started > within:
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return time.monotonic() - started
        time.sleep(every)
    sock.settimeout(max(0.1, within - (time.monotonic() - started)))
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return float("inf")
    except OSError:
        pass
    return time.monotonic() - started


SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"a" * 200


@pytest.fixture
def short_heads(start_proxy: ProxyFactory) -> Proxy:
    """A proxy that waits at most a second for a request's head."""
    return start_proxy("--header-timeout", "1")


def assert_slow_head_is_closed(sock: socket.socket) -> None:
    took = dribble_until_closed(sock, SLOW_HEAD, every=0.05, within=6)
    assert 0.8 < took < 3


def healthz_once(proxy: Proxy) -> bytes:
    """The answer to /healthz on a connection of its own."""
    with connect(proxy) as sock:
        sock.sendall(HEALTHZ)
        return read_answer(sock)


def assert_healthz_served(sock: socket.socket) -> None:
    sock.sendall(HEALTHZ)
    assert read_answer(sock).startswith(b"HTTP/1.1 200")


def test_a_head_sent_a_byte_at_a_time_is_closed_once_the_header_timeout_passes(
    short_heads: Proxy,
) -> None:
    with connect(short_heads) as sock:
        assert_slow_head_is_closed(sock)


def test_a_slow_second_head_on_a_kept_alive_connection_is_closed_too(short_heads: Proxy) -> None:
    with connect(short_heads) as sock:
        assert_healthz_served(sock)
        time.sleep(1.5)  # idle between requests is the keep-alive timeout's, not this one's
        assert_slow_head_is_closed(sock)


def test_a_head_in_pieces_within_the_timeout_and_an_idle_keepalive_are_served(
    short_heads: Proxy,
) -> None:
    with connect(short_heads) as sock:
        for piece in (HEALTHZ[:10], HEALTHZ[10:20], HEALTHZ[20:]):
            sock.sendall(piece)
            time.sleep(0.2)
        assert read_answer(sock).startswith(b"HTTP/1.1 200")
        time.sleep(1.5)
        assert_healthz_served(sock)


def test_a_request_body_that_goes_silent_is_answered_408_after_the_body_timeout(
    start_proxy: ProxyFactory,
) -> None:
    proxy = start_proxy("--body-timeout", "1")
    with connect(proxy) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'{"model": '
        )
        started = time.monotonic()
        sock.settimeout(4)
        answer = read_answer(sock)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert 0.8 < took < 3
    error = orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "request_timeout"
    assert error["type"] == "invalid_request_error"


def test_connections_beyond_the_cap_get_a_503_in_openai_shape_and_are_closed(
    start_proxy: ProxyFactory,
) -> None:
    proxy = start_proxy("--max-connections", "2", "--header-timeout", "30")

    def answered() -> socket.socket | None:
        """A connection answered, so accepted and counted, then idle on keep-alive; None while
        the start-up check's connection still holds a slot (the proxy has yet to see it end)."""
        sock = connect(proxy)
        sock.sendall(HEALTHZ)
        if read_answer(sock).startswith(b"HTTP/1.1 200"):
            return sock
        sock.close()
        return None

    held = [sock for sock in (settled(answered, within=5), settled(answered, within=5)) if sock]
    try:
        assert len(held) == 2
        with connect(proxy) as extra:
            extra.sendall(HEALTHZ)
            answer = read_answer(extra)
            assert extra.recv(65536) == b""  # closed after the answer
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"Retry-After: 1" in answer
        error = orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]
        assert error["code"] == "too_many_connections"
        held.pop().close()
        answer = settled(  # the slot frees once the proxy sees the close
            lambda: healthz_once(proxy), lambda a: a.startswith(b"HTTP/1.1 200"), 5, 0.1
        )
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()


def _soft_nofile(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no descriptor limit in /proc")


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one_at_start(sim: Sim) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    with running_proxy(sim.v1, preexec_fn=lower) as proxy:
        assert _soft_nofile(proxy.proc.pid) == (hard, hard)


# --- clients that stop reading their answer ---------------------------------------------------

BIG = 8 * 1024 * 1024  # beyond what loopback's socket buffers take: the proxy must wait on it


def huge_completion() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-big",
            "object": "chat.completion",
            "model": "gpt-4o-mini",
            "system_fingerprint": "fp_big",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "x" * BIG},
                    "finish_reason": "stop",
                }
            ],
        }
    )


def endless_stream(ended: list[str]) -> Writer:
    """An SSE stream far longer than any socket buffer; `ended` gets how its writing ended."""
    frame = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
    frame += b'"delta":{"content":"' + b"x" * 4000 + b'"}}]}\n\n'
    chunk = b"%x\r\n%s\r\n" % (len(frame), frame)

    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(SSE_HEAD)
        try:
            for _ in range(20_000):
                writer.write(chunk)
                await writer.drain()
            ended.append("finished")
        except OSError as exc:
            ended.append(type(exc).__name__)

    return write


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def asking(proxy: Proxy, body: bytes, tiny: bool = True) -> socket.socket:
    """A client that sends its request and reads nothing yet (from a tiny receive buffer)."""
    sock = socket.socket()
    if tiny:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", proxy.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer sk-reader\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    return sock


def read_all(sock: socket.socket, pause: float = 0.0, piece: int = 256 * 1024) -> int:
    """Bytes the proxy sent before closing (or before the answer went quiet for 5 s)."""
    sock.settimeout(5)
    total = 0
    try:
        while chunk := sock.recv(piece):
            total += len(chunk)
            time.sleep(pause)
    except (TimeoutError, ConnectionResetError):
        pass
    return total


def chat(prompt: str, stream: bool = False) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    return orjson.dumps({**body, "stream": True} if stream else body)


def test_a_client_that_reads_none_of_a_stream_is_closed_and_frees_the_upstream(
    start_proxy: ProxyFactory,
) -> None:
    """Without a send timeout the relay waited on the client forever, holding the upstream
    connection (and, with --upstream-connections, a slot every other caller needs)."""
    ended: list[str] = []
    with Scripted(endless_stream(ended)) as upstream:
        proxy = start_proxy(
            "--send-timeout", "1", "--stream-disconnect", "cancel", upstream=upstream.v1
        )
        with asking(proxy, chat("never read", stream=True)) as sock:
            assert settled(lambda: bool(ended), within=20, pause=0.1), (
                "the upstream is still held by a silent client"
            )
            assert ended != ["finished"]
            assert read_all(sock) < 20_000 * 4000


def test_a_client_that_reads_none_of_a_whole_answer_is_closed(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    answer = http_answer(huge_completion(), "Content-Type: application/json")
    log = tmp_path / "proxy.log"
    with Scripted(fixed(answer)) as upstream, log.open("wb") as sink:
        proxy = start_proxy("--send-timeout", "1", upstream=upstream.v1, stderr=sink)
        with asking(proxy, chat("big, never read")) as sock:
            closed = settled(
                lambda: b"it read none of its answer in time" in log.read_bytes(), within=20
            )
            assert closed, "the proxy still waits on a client that reads nothing"
            assert read_all(sock) < BIG
        assert b"never read" not in log.read_bytes()  # no prompt in the log line


def test_a_client_that_reads_slowly_but_steadily_gets_its_whole_answer(
    start_proxy: ProxyFactory,
) -> None:
    """As nginx's send_timeout: the bound is on a silence, not on the whole transfer (several
    seconds here, at a few MB/s)."""
    answer = http_answer(huge_completion(), "Content-Type: application/json")
    with Scripted(fixed(answer)) as upstream:
        proxy = start_proxy("--send-timeout", "1", upstream=upstream.v1)
        with asking(proxy, chat("big, read slowly"), tiny=False) as sock:
            received = read_all(sock, pause=0.02, piece=64 * 1024)
    assert received > len(huge_completion())
