"""Clients that read a large answer slowly (real processes, raw sockets): a whole answer was
handed to the socket at once, and asyncio kept what the socket had not taken yet in a copy of
its own, per connection: 125 clients not reading a stored 30 MB answer took the proxy to
3.7 GB."""

from __future__ import annotations

import asyncio
import socket
import time

import orjson

from bench.procs import rss_kib
from tests.fixtures_procs import Proxy, ProxyFactory
from tests.hostile import Received, Scripted, completion, http_answer

MIB = 1 << 20
READERS = 30
QUESTION = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "q"}]})


def large() -> Scripted:
    answer = http_answer(completion("x" * (20 * MIB)), "Content-Type: application/json")

    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(answer)
        await writer.drain()

    return Scripted(write)


def asking_without_reading(proxy: Proxy) -> socket.socket:
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", proxy.port))
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Authorization: Bearer sk-slow\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(QUESTION)}\r\n\r\n"
    )
    client.sendall(head.encode() + QUESTION)
    return client


def test_clients_reading_a_large_answer_slowly_hold_a_piece_of_it_each(
    start_proxy: ProxyFactory,
) -> None:
    with large() as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        first = asking_without_reading(proxy)
        received = b""
        first.settimeout(30)
        while b"X-Repro-Cache" not in received:
            received += first.recv(65536)
        assert b"X-Repro-Cache: MISS" in received
        first.close()
        time.sleep(1.0)
        before = rss_kib(proxy.proc.pid) / 1024
        readers = [asking_without_reading(proxy) for _ in range(READERS)]
        try:
            time.sleep(2.0)
            held = rss_kib(proxy.proc.pid) / 1024 - before
            readers[0].settimeout(10)
            assert b"X-Repro-Cache: HIT" in readers[0].recv(4096)
        finally:
            for reader in readers:
                reader.close()
    # Handed over whole, they held a copy each: 600 MiB here.
    assert held < 64
