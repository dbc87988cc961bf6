"""Request bodies held at once (real processes, raw sockets): each is bounded by --max-body,
but a client choosing to hold many open chose how much memory the proxy held; and a body a
client cut short stayed in memory after it left, until the collector's oldest generation ran."""

from __future__ import annotations

import gzip
import socket
import time

import httpx

from bench.procs import rss_kib
from proxy.core.budget import HELD_AT_ONCE
from tests.fixtures_procs import Proxy, ProxyFactory, Sim

MIB = 1 << 20
INFLATED = 8 * MIB
HELD = 2 * HELD_AT_ONCE // INFLATED  # twice what the budget holds


def gzipped_body() -> bytes:
    """16 KiB or so of gzip that inflates to a chat request of INFLATED bytes."""
    prefix = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"'
    suffix = b'"}]}'
    return gzip.compress(prefix + b"a" * (INFLATED - len(prefix) - len(suffix)) + suffix, 9)


def head(length: int) -> bytes:
    return (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def all_but_the_last_byte(proxy: Proxy, sent: bytes) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(head(len(sent)) + sent[:-1])
    return client


def settled_rss_mib(proxy: Proxy) -> float:
    time.sleep(1.0)
    return rss_kib(proxy.proc.pid) / 1024


def test_a_body_cut_short_is_let_go_when_its_client_leaves(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy()
    sent = gzipped_body()
    assert len(sent) < 64 * 1024
    before = settled_rss_mib(proxy)
    for _ in range(40):  # 320 MiB inflated, one at a time
        client = all_but_the_last_byte(proxy, sent)
        time.sleep(0.15)
        client.close()
    # Kept until a full collection, they were 300 MiB more here; let go, a few.
    assert settled_rss_mib(proxy) - before < 64
    assert sim.llm_requests() == []


def test_bodies_read_at_once_are_held_within_a_budget(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy("--body-timeout", "30")
    sent = gzipped_body()
    before = settled_rss_mib(proxy)
    clients = []
    try:
        for _ in range(HELD):
            clients.append(all_but_the_last_byte(proxy, sent))
            time.sleep(0.05)
        held = settled_rss_mib(proxy) - before
        refused = []
        for client in clients:
            client.settimeout(0.2)
            try:
                answer = client.recv(65536)
            except TimeoutError:
                continue
            refused.append(answer)
    finally:
        for client in clients:
            client.close()
    # Half of them past the budget, each refused at once, told to retry.
    assert HELD // 2 - 2 <= len(refused) <= HELD // 2 + 2
    for answer in refused:
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"too_many_bodies" in answer and b"Retry-After: 1" in answer
    assert held < HELD_AT_ONCE / MIB + 96  # held all, they were twice the budget
    time.sleep(0.5)
    plain = httpx.post(
        proxy.url + "/v1/chat/completions",
        content=gzip.decompress(sent),
        headers={"Authorization": "Bearer sk-after", "Content-Type": "application/json"},
        timeout=30,
    )
    assert plain.status_code == 200  # the budget is whole again
