"""Clients that leave at each point where a request waits: while sending the body, while the
store answers, while the upstream answers (as leader and as follower), while a stream or a
pass-through answer is relayed. The proxy is then checked whole: the fill lock free, what was
answered stored, no upstream connection left open, nothing in the log but info lines, and the
counters as documented. The leaving client is a raw socket that resets its connection."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from bench.procs import rss_kib, settled
from tests.fixtures_procs import Proxy, ProxyFactory, Sim, running_proxy, socket_inodes
from tests.fixtures_redis import running_redis
from tests.hostile import Received, Scripted, Writer, completion, dripping_json, http_answer

CHAT = "/v1/chat/completions"
BROKEN = (
    "Traceback",
    "never retrieved",
    "Unclosed",
    "unhandled error",
    "Error handling request",
)


def chat_body(content: str, *, stream: bool = False) -> bytes:
    body: dict[str, object] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": content}],
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def post(path: str, body: bytes, *, length: int | None = None) -> bytes:
    declared = len(body) if length is None else length
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sk-tenant\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    )
    return head.encode() + body


@contextlib.contextmanager
def leaving(port: int, data: bytes, *, reset: bool = True) -> Iterator[socket.socket]:
    """A connection that sends `data` and, once the block ends, resets (as a killed client's
    kernel does), or closes (`reset` False: what it sent is then sure to arrive first)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        sock.sendall(data)
        yield sock
    finally:
        sock.close()


def assert_whole_log(log: Path) -> None:
    text = log.read_text(errors="replace")
    for marker in BROKEN:
        assert marker not in text, text[-4000:]


def open_connections(pid: int, port: int) -> int:
    """The process's established TCP connections to `port` on loopback."""
    inodes = socket_inodes(pid)
    count = 0
    with open(f"/proc/{pid}/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


def served(proxy: Proxy) -> float:
    """Every request counted in repro_requests_total, whatever its route and outcome."""
    return sum(s.value for s in proxy.samples() if s.name == "repro_requests_total")


def test_a_leader_that_leaves_while_the_upstream_answers_still_has_it_stored(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """As nginx with proxy_ignore_client_abort, and as `--stream-disconnect finish` does for a
    stream: the answer is paid for, so it is stored, and the client's retry is a HIT."""
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = start_proxy(stderr=sink)
    sim.settings(latency=1.0)
    with leaving(proxy.port, post(CHAT, chat_body("leader leaves"))):
        settled(sim.llm_requests, lambda r: len(r) == 1)
    misses = settled(lambda: proxy.metric("repro_cache_misses_total", model="gpt-4o-mini"))
    assert misses == 1
    sim.settings(latency=0.0)
    retry = proxy.chat("leader leaves")
    assert retry.status_code == 200
    assert retry.headers["X-Repro-Cache"] == "HIT"
    assert len(sim.llm_requests()) == 1
    assert settled(lambda: open_connections(proxy.proc.pid, sim.port), lambda n: n <= 1) <= 1
    assert_whole_log(log)


def test_a_follower_that_leaves_holds_back_neither_the_leader_nor_the_next_request(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = start_proxy("--lock-timeout", "60", stderr=sink)
    sim.settings(latency=1.0)
    answers: list[httpx.Response] = []
    leader = threading.Thread(target=lambda: answers.append(proxy.chat("one question")))
    leader.start()
    try:
        settled(sim.llm_requests, lambda r: len(r) == 1)
        for _ in range(5):
            with leaving(proxy.port, post(CHAT, chat_body("one question"))):
                pass
    finally:
        leader.join(20)
    assert [a.headers["X-Repro-Cache"] for a in answers] == ["MISS"]
    after = proxy.chat("one question", timeout=10)  # never the 60 s lock timeout
    assert after.headers["X-Repro-Cache"] == "HIT"
    assert len(sim.llm_requests()) == 1
    assert_whole_log(log)


def test_a_leader_that_leaves_frees_the_redis_fill_lock_for_other_replicas(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "proxy.log"
    flags = ("--store", redis_url, "--secret", "s-sixteen-bytes!", "--lock-timeout", "60")
    with log.open("wb") as sink:
        first = start_proxy(*flags, stderr=sink)
    second = start_proxy(*flags)
    sim.settings(latency=1.0)
    with leaving(first.port, post(CHAT, chat_body("across replicas"))):
        settled(sim.llm_requests, lambda r: len(r) == 1)
    client = redis.Redis.from_url(redis_url)
    locks = settled(lambda: client.keys("*l:{*"), lambda keys: not keys)
    assert locks == []
    answer = second.chat("across replicas", timeout=10)
    assert answer.headers["X-Repro-Cache"] == "HIT"
    assert len(sim.llm_requests()) == 1
    assert_whole_log(log)


def test_a_client_that_leaves_while_redis_is_frozen_leaves_no_lock_and_no_error(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    log = tmp_path / "proxy.log"
    with running_redis(tmp_path / "redis") as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        with log.open("wb") as sink:
            proxy = start_proxy("--store", url, "--lock-timeout", "60", stderr=sink)
        os.kill(server.pid, signal.SIGSTOP)
        try:
            with leaving(proxy.port, post(CHAT, chat_body("frozen store"))):
                time.sleep(1.0)  # past --store-timeout: its lookup and lock went unanswered
        finally:
            os.kill(server.pid, signal.SIGCONT)
        answer = proxy.chat("frozen store", timeout=10)
        assert answer.status_code == 200
        assert answer.headers["X-Repro-Cache"] in {"HIT", "MISS"}
        assert len(sim.llm_requests()) <= 2
        client = redis.Redis(port=server.port)
        assert settled(lambda: client.keys("*l:{*"), lambda keys: not keys) == []
    assert_whole_log(log)


def test_a_body_the_client_abandons_midway_is_no_error_of_the_proxy(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = start_proxy(stderr=sink)
    body = chat_body("cut short")
    with leaving(proxy.port, post(CHAT, body[:20], length=len(body))):
        pass
    settled(lambda: served(proxy), lambda n: n >= 1, within=3)
    assert proxy.metric("repro_requests_total", route=CHAT, cache="error") == 0
    assert sim.llm_requests() == []
    assert proxy.chat("whole").status_code == 200
    assert_whole_log(log)


def test_a_stream_left_midway_is_finished_stored_and_logged_once(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = start_proxy(stderr=sink)
    sim.settings(chunk_delay=0.05)
    with leaving(proxy.port, post(CHAT, chat_body("stream left", stream=True))) as sock:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sim.settings(chunk_delay=0.0)
    stored = settled(
        lambda: httpx.post(
            proxy.v1 + "/chat/completions",
            content=chat_body("stream left", stream=True),
            headers={"Authorization": "Bearer sk-tenant", "Cache-Control": "only-if-cached"},
            timeout=10,
        ),
        lambda r: r.status_code == 200,
    )
    assert stored.headers["X-Repro-Cache"] == "HIT"
    assert len(sim.llm_requests()) == 1
    assert_whole_log(log)


def test_a_passthrough_answer_left_midway_closes_its_upstream_connection(
    tmp_path: Path,
) -> None:
    log = tmp_path / "proxy.log"
    finished = threading.Event()
    with (
        Scripted(dripping_json(200, 0.05, finished)) as upstream,
        log.open("wb") as sink,
        running_proxy(upstream.v1, stderr=sink) as proxy,
    ):
        get = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sk-t\r\n\r\n"
        with leaving(proxy.port, get) as sock:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        # The proxy's side closes long before the upstream has sent its 200 drips.
        assert settled(lambda: upstream.open_now, lambda n: n == 0) == 0
        assert not finished.is_set()
    assert_whole_log(log)


def test_a_passthrough_upload_left_midway_is_cut_short_upstream_too(tmp_path: Path) -> None:
    log = tmp_path / "proxy.log"

    async def never(_: asyncio.StreamWriter, __: Received) -> None:
        raise AssertionError("a cut upload reached its end")

    with (
        Scripted(never) as upstream,
        log.open("wb") as sink,
        running_proxy(upstream.v1, stderr=sink) as proxy,
    ):
        with leaving(proxy.port, post("/v1/files", b"x" * 1000, length=100_000)):
            settled(lambda: upstream.connections, lambda n: n >= 1, within=3)
        assert settled(lambda: upstream.open_now, lambda n: n == 0) == 0
        assert settled(lambda: len(upstream.cut), lambda n: n == 1) == 1
        assert upstream.received == []
        # The client broke it, not the upstream: nothing for an upstream alert to count.
        assert proxy.metric("repro_requests_total", route="/v1/*", cache="error") == 0
    assert_whole_log(log)
    assert "upstream failed" not in log.read_text()


@pytest.mark.parametrize("setup", ["memory", "redis", "cancel"])
def test_two_hundred_clients_leaving_everywhere_leave_the_proxy_as_it_was(
    start_proxy: ProxyFactory,
    sim: Sim,
    tmp_path: Path,
    setup: str,
    request: pytest.FixtureRequest,
) -> None:
    """One upstream connection in all: a single one held by a request nobody waits for would
    leave the last request no connection at all."""
    log = tmp_path / "proxy.log"
    flags = ["--upstream-connections", "1", "--lock-timeout", "60"]
    redis_url = request.getfixturevalue("redis_url") if setup == "redis" else None
    if redis_url is not None:
        flags += ["--store", redis_url, "--secret", "s-sixteen-bytes!"]
    if setup == "cancel":
        flags += ["--stream-disconnect", "cancel"]
    with log.open("wb") as sink:
        proxy = start_proxy(*flags, stderr=sink)
    sim.settings(latency=0.01, chunk_delay=0.005)
    for n in range(10):  # warm: every path's modules loaded, its memos made
        proxy.chat(f"warm {n}")
    baseline = rss_kib(proxy.proc.pid)
    counted = served(proxy)
    for n in range(200):
        kind = n % 4
        if kind == 0:
            body = chat_body(f"cut {n}")
            data = post(CHAT, body[:10], length=len(body))
        elif kind == 1:
            data = post(CHAT, chat_body(f"left {n}"))
        elif kind == 2:
            data = post(CHAT, chat_body(f"stream {n}", stream=True))
        else:
            data = post(CHAT, chat_body("warm 0"))  # a HIT nobody reads
        with leaving(proxy.port, data, reset=False):
            pass
    # Each request counted once, when its handler ends; one whose body never came, never.
    total = settled(lambda: served(proxy), lambda v: v >= counted + 150, within=60)
    assert total == counted + 150
    assert settled(lambda: len(sim.llm_requests()), lambda n: n >= 110) == 110
    after = proxy.chat("after", timeout=30)
    assert after.status_code == 200
    assert after.headers["X-Repro-Cache"] == "MISS"
    assert open_connections(proxy.proc.pid, sim.port) <= 1
    assert proxy.chat("left 1").headers["X-Repro-Cache"] == "HIT"  # finished and stored
    assert rss_kib(proxy.proc.pid) - baseline < 16 * 1024
    if redis_url is not None:
        assert redis.Redis.from_url(redis_url).keys("*l:{*") == []
    assert_whole_log(log)


def held_until(release: threading.Event) -> Writer:
    """Answer each request once `release` is set (at most 20 s)."""

    async def write(writer: asyncio.StreamWriter, request: Received) -> None:
        await asyncio.to_thread(release.wait, 20)
        writer.write(http_answer(completion(request.body.decode()[-20:])))
        await writer.drain()

    return write


def test_a_request_whose_client_left_keeps_its_connection_slot_until_it_ends(
    tmp_path: Path,
) -> None:
    """Its handler goes on and holds an upstream connection: freed at once, its slot would let
    a client that opens, asks and leaves in a loop hold any number of upstream connections
    (and descriptors) past --max-connections. nginx counts such a request against
    worker_connections until it ends too."""
    log = tmp_path / "proxy.log"
    release = threading.Event()
    with (
        Scripted(held_until(release)) as upstream,
        log.open("wb") as sink,
        running_proxy(upstream.v1, "--max-connections", "2", stderr=sink) as proxy,
    ):
        try:
            for n in range(2):
                with leaving(proxy.port, post(CHAT, chat_body(f"held {n}"))):
                    settled(lambda: len(upstream.received), lambda k, n=n: k > n, within=5)
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
                sock.sendall(post(CHAT, chat_body("third")))
                refused = sock.recv(65536)
        finally:
            release.set()
        assert refused.startswith(b"HTTP/1.1 503"), refused[:200]
        served_after = settled(lambda: proxy.chat("held 0", timeout=10), lambda r: r.is_success)
        assert served_after.headers["X-Repro-Cache"] == "HIT"
    assert upstream.most_open == 2
    assert_whole_log(log)


def test_a_large_answer_whose_client_left_is_still_read_aside_and_stored(tmp_path: Path) -> None:
    """An answer of a MiB and more is parsed in the offload child: a client gone meanwhile
    changes nothing of it, as for any miss."""
    log = tmp_path / "proxy.log"
    release = threading.Event()
    large = http_answer(completion("x" * (2 << 20)))

    async def answer(writer: asyncio.StreamWriter, _: Received) -> None:
        await asyncio.to_thread(release.wait, 20)
        writer.write(large)
        await writer.drain()

    with (
        Scripted(answer) as upstream,
        log.open("wb") as sink,
        running_proxy(upstream.v1, stderr=sink) as proxy,
    ):
        try:
            with leaving(proxy.port, post(CHAT, chat_body("large"))):
                settled(lambda: len(upstream.received), lambda n: n == 1, within=5)
        finally:
            release.set()
        stored = settled(
            lambda: proxy.chat("large", headers={"Cache-Control": "only-if-cached"}),
            lambda r: r.status_code == 200,
        )
        assert stored.headers["X-Repro-Cache"] == "HIT"
        assert len(stored.content) > 2 << 20
        assert len(upstream.received) == 1
    assert_whole_log(log)


def test_a_client_that_leaves_during_its_key_check_holds_back_nobody(tmp_path: Path) -> None:
    """In `shared` scope the key is checked with the upstream before the lookup; a second
    request of the key joins that check. The first client leaving changes neither."""
    log = tmp_path / "proxy.log"
    release = threading.Event()
    models = orjson.dumps({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})
    refused = orjson.dumps({"error": {"message": "bad key", "type": "invalid_request_error"}})

    async def answer(writer: asyncio.StreamWriter, request: Received) -> None:
        if request.request_line.startswith("GET /v1/models"):
            if request.headers.get("authorization") != "Bearer sk-tenant":
                writer.write(http_answer(refused, status="401 Unauthorized"))
            else:
                await asyncio.to_thread(release.wait, 20)
                writer.write(http_answer(models, "Content-Type: application/json"))
        else:
            writer.write(http_answer(completion("checked"), "Content-Type: application/json"))
        await writer.drain()

    flags = ("--cache-scope", "shared", "--secret", "s-sixteen-bytes!")
    answers: list[httpx.Response] = []
    with (
        Scripted(answer) as upstream,
        log.open("wb") as sink,
        running_proxy(upstream.v1, *flags, stderr=sink) as proxy,
    ):
        joined = threading.Thread(target=lambda: answers.append(proxy.chat("checked")))
        try:
            with leaving(proxy.port, post(CHAT, chat_body("checked"))):
                settled(lambda: len(upstream.received), lambda n: n >= 1, within=5)
                joined.start()
        finally:
            release.set()
            joined.join(20)
        assert [a.status_code for a in answers] == [200]
        again = proxy.chat("checked")
        assert again.headers["X-Repro-Cache"] == "HIT"
        assert upstream.received[0].request_line.startswith("GET /v1/models")  # the held check
        chats = [r for r in upstream.received if r.request_line.startswith("POST")]
        assert len(chats) == 1
    assert_whole_log(log)
