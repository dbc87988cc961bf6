"""Slow and greedy clients against a real proxy: slowloris heads, silent bodies, too many
connections, and the descriptor limit. The attacking client is a raw socket on loopback."""

from __future__ import annotations

import resource
import socket
import time
from pathlib import Path

import orjson
import pytest

from tests.fixtures_procs import Proxy, ProxyFactory, Sim, running_proxy

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
    held = [connect(proxy), connect(proxy)]
    try:
        time.sleep(0.3)
        with connect(proxy) as extra:
            extra.sendall(HEALTHZ)
            answer = read_answer(extra)
            assert extra.recv(65536) == b""  # closed after the answer
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"Retry-After: 1" in answer
        error = orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]
        assert error["code"] == "too_many_connections"
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the slot frees once the proxy sees the close
            with connect(proxy) as fresh:
                fresh.sendall(HEALTHZ)
                answer = read_answer(fresh)
            if answer.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
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
