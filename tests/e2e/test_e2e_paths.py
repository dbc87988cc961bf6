"""A hostile client's pass-through paths, through a real proxy, to an upstream written here that
records every request target it receives: nothing outside /v1/ ever reaches it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import orjson
import pytest

from tests.fixtures_procs import Proxy, ProxyFactory, raw_answer

ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\n{}"
)


class RecordingUpstream:
    """Answers `{}` to anything and keeps the request target of each request."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.targets: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                self.targets.append(head.split(b" ", 2)[1].decode("latin-1"))
                conn.sendall(ANSWER)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    recording = RecordingUpstream()
    try:
        yield recording
    finally:
        recording.close()


def ask(proxy: Proxy, target: str) -> tuple[int, bytes, bytes]:
    """Send `target` exactly as written (an HTTP library would resolve it first)."""
    return raw_answer(
        proxy.port,
        b"GET " + target.encode("latin-1") + b" HTTP/1.1\r\nHost: localhost\r\n"
        b"Authorization: Bearer sk-tenant\r\nConnection: close\r\n\r\n",
    )


HOSTILE = [
    "/v1/../admin",
    "/v1/%2e%2e/admin",
    "/v1/%2E%2E/%2E%2E/admin",
    "/v1/files/../../admin",
    "/v1/files/..%2f..%2fadmin",
    "/v1/files/..%5c..%5cadmin",
    "/v1/files/..\\..\\admin",
    "/v1/files/%252e%252e%252fadmin",
    "/v1/files/..;/..;/admin",
]


def test_no_hostile_path_reaches_the_upstream_outside_v1(
    start_proxy: ProxyFactory, upstream: RecordingUpstream
) -> None:
    proxy = start_proxy(upstream=f"http://127.0.0.1:{upstream.port}/v1")
    for target in HOSTILE:
        status, _, body = ask(proxy, target)
        assert status == 400, target
        assert orjson.loads(body)["error"]["code"] == "invalid_path", target
    assert upstream.targets == []


def test_paths_inside_v1_arrive_resolved_and_legitimate_ones_unchanged(
    start_proxy: ProxyFactory, upstream: RecordingUpstream
) -> None:
    proxy = start_proxy(upstream=f"http://127.0.0.1:{upstream.port}/v1")
    assert ask(proxy, "/v1/files/file-abc/content?x=1")[0] == 200
    assert ask(proxy, "/v1/files/%2e/file-abc/../file-def")[0] == 200
    assert upstream.targets == ["/v1/files/file-abc/content?x=1", "/v1/files/file-def"]
