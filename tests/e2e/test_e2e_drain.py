"""Graceful shutdown as an orchestrator drives it: SIGTERM while requests are in flight.

A real `repro-proxy serve` (one process, or a supervisor and its workers) in front of the sim
(its latency makes slow answers) or a scripted upstream, a real Redis where what was answered
must still be there for the next process, raw aiohttp clients and sockets. On SIGTERM the proxy
refuses new connections, closes idle keep-alive ones at once, lets every request in flight
finish (whole answers, streams, coalesced followers, pass-through, requests whose client left),
each answered with `Connection: close` and stored as usual, then exits 0 with a log line; within
`--shutdown-timeout`, after which (or at a second signal) what is left is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
from multidict import CIMultiDictProxy

from bench.procs import settled, stop
from tests.fixtures_procs import (
    Proxy,
    ProxyFactory,
    Sim,
    launch_proxy,
    running_proxy,
    socket_inodes,
)
from tests.hostile import Received, Scripted, Writer, http_answer

CHAT = "/v1/chat/completions"
AUTH = {"Authorization": "Bearer sk-tenant"}
BROKEN = ("Traceback", "never retrieved", "Unclosed", "unhandled error", "Error handling request")
EXIT_WITHIN = 15.0  # seconds a drained proxy has to exit once its last request ended


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


def chat(content: str, *, stream: bool = False) -> dict[str, object]:
    body: dict[str, object] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": content}],
    }
    if stream:
        body["stream"] = True
    return body


@contextlib.asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def ask(session: aiohttp.ClientSession, proxy: Proxy, content: str) -> Answer:
    async with session.post(proxy.v1 + "/chat/completions", json=chat(content), headers=AUTH) as r:
        return Answer(r.status, r.headers, await r.read())


async def fresh(proxy: Proxy, content: str) -> Answer:
    """One question on a connection of its own (so that workers sharing the port each get some)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        return await ask(session, proxy, content)


def chats(sim: Sim) -> list[dict[str, object]]:
    return [r for r in sim.llm_requests() if str(r["path"]).endswith(CHAT)]


async def arrived(sim: Sim, count: int) -> None:
    """Until the sim has received `count` LLM requests (at most 10 s)."""
    seen = await asyncio.to_thread(settled, lambda: chats(sim), lambda r: len(r) >= count)
    assert len(seen) >= count, seen


async def read_by(proxy: Proxy) -> None:
    """A request on a new connection answered: the proxy's loop has read what reached it before
    (a request sent just before SIGTERM is then in flight, not on an idle connection)."""
    async with client() as session, session.get(proxy.url + "/healthz") as response:
        assert response.status == 200


async def refused(proxy: Proxy) -> None:
    """Until the proxy refuses new connections (at most 10 s): it has begun to stop."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        except ConnectionError:  # refused; or reset, when the listener closed on it in backlog
            return
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.05)
    raise AssertionError("the proxy still accepts connections")


async def exit_status(proxy: Proxy, within: float = EXIT_WITHIN) -> int:
    return await asyncio.to_thread(proxy.proc.wait, within)


async def logged(log: Path, line: str, count: int = 1) -> None:
    def text() -> str:
        return log.read_text(errors="replace")

    found = await asyncio.to_thread(settled, text, lambda t: t.count(line) >= count)
    assert found.count(line) >= count, found[-3000:]


def clean(log: Path) -> str:
    text = log.read_text(errors="replace")
    for marker in BROKEN:
        assert marker not in text, text[-4000:]
    return text


async def test_a_whole_miss_in_flight_is_answered_and_stored_in_redis(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = start_proxy("--store", redis_url, stderr=sink)
    sim.settings(latency=1.5)
    async with client() as session:
        answer = asyncio.create_task(ask(session, proxy, "whole at sigterm"))
        await arrived(sim, 1)
        proxy.proc.send_signal(signal.SIGTERM)
        got = await answer
    assert got.status == 200
    assert got.headers["X-Repro-Cache"] == "MISS"
    assert orjson.loads(got.body)["choices"][0]["finish_reason"] == "stop"
    assert got.headers["Connection"] == "close"  # the client must not reuse it
    assert await exit_status(proxy) == 0

    sim.settings(latency=0.0)
    successor = start_proxy("--store", redis_url)
    async with client() as session:
        again = await ask(session, successor, "whole at sigterm")
    assert again.headers["X-Repro-Cache"] == "HIT"
    assert again.body == got.body
    assert len(chats(sim)) == 1
    await logged(log, '"stopping: every request finished","requests":1')
    await logged(log, '"msg":"stopped"')
    clean(log)


async def test_a_stream_in_flight_runs_to_its_end_and_is_stored_in_redis(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = start_proxy("--store", redis_url, stderr=sink)
    sim.settings(chunk_delay=0.1)
    body = chat("stream at sigterm", stream=True)
    async with (
        client() as session,
        session.post(proxy.v1 + "/chat/completions", json=body, headers=AUTH) as response,
    ):
        first = await response.content.readline()
        assert first.startswith(b"data: ")
        proxy.proc.send_signal(signal.SIGTERM)
        rest = await response.content.read()
    streamed = first + rest
    assert streamed.endswith(b"data: [DONE]\n\n")
    assert streamed.count(b"data: ") > 10  # many chunks came after the signal
    assert await exit_status(proxy) == 0

    successor = start_proxy("--store", redis_url)
    async with (
        client() as session,
        session.post(successor.v1 + "/chat/completions", json=body, headers=AUTH) as again,
    ):
        assert again.headers["X-Repro-Cache"] == "HIT"
        assert await again.read() == streamed
    assert len(chats(sim)) == 1
    await logged(log, '"stopping: every request finished","requests":1')
    clean(log)


def server_socket(pid: int, client_port: int) -> str | None:
    """The inode of `pid`'s end of the loopback connection from `client_port`, while it holds
    it open."""
    inodes = socket_inodes(pid)
    with open(f"/proc/{pid}/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if int(fields[2].split(":")[1], 16) == client_port and fields[9] in inodes:
                return str(fields[9])
    return None


def raw_chat(content: str) -> bytes:
    body = orjson.dumps(chat(content))
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sk-tenant\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def test_the_answer_of_a_client_that_left_is_stored_before_exit(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, tmp_path: Path
) -> None:
    """The request goes on without its client (nginx's proxy_ignore_client_abort), so that the
    retry is a HIT: aiohttp forgets such a connection, and its shutdown did not wait for it,
    closing the store under it: the answer, paid for, was lost with the process."""
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = start_proxy("--store", redis_url, stderr=sink)
    sim.settings(latency=2.0)
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    port = sock.getsockname()[1]
    sock.sendall(raw_chat("left before sigterm"))
    await arrived(sim, 1)
    held = server_socket(proxy.proc.pid, port)
    assert held is not None
    sock.close()  # a reset, as a killed client's kernel sends
    gone = await asyncio.to_thread(
        settled, lambda: server_socket(proxy.proc.pid, port), lambda inode: inode is None
    )
    assert gone is None  # the proxy has seen its client leave
    proxy.proc.send_signal(signal.SIGTERM)
    assert await exit_status(proxy) == 0

    sim.settings(latency=0.0)
    successor = start_proxy("--store", redis_url)
    async with client() as session:
        again = await ask(session, successor, "left before sigterm")
    assert again.headers["X-Repro-Cache"] == "HIT"
    assert len(chats(sim)) == 1
    await logged(log, '"stopping: every request finished","requests":1')
    clean(log)


def held_until(release: threading.Event) -> Writer:
    """Answer a pass-through GET once `release` is set (at most 20 s), anything else at once."""

    async def write(writer: asyncio.StreamWriter, request: Received) -> None:
        if request.request_line.startswith("GET /v1/files/held"):
            await asyncio.to_thread(release.wait, 20)
        writer.write(http_answer(b'{"object": "file"}', "Content-Type: application/json"))
        await writer.drain()

    return write


async def test_coalesced_followers_and_a_passthrough_in_flight_are_answered(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = start_proxy(stderr=sink)
    sim.settings(latency=1.5)
    upload = b"x" * 300_000
    sent_half = asyncio.Event()
    go_on = asyncio.Event()

    async def slow_upload() -> AsyncIterator[bytes]:
        yield upload[:150_000]
        sent_half.set()
        await go_on.wait()
        yield upload[150_000:]

    async def send_file(session: aiohttp.ClientSession) -> tuple[int, object]:
        headers = {**AUTH, "Content-Type": "application/octet-stream"}
        async with session.post(proxy.v1 + "/files", data=slow_upload(), headers=headers) as r:
            return r.status, (await r.json())["bytes"]

    async with client() as session:
        asked = [asyncio.create_task(ask(session, proxy, "coalesced")) for _ in range(3)]
        uploading = asyncio.create_task(send_file(session))
        await arrived(sim, 1)
        await asyncio.wait_for(sent_half.wait(), 10)
        await read_by(proxy)
        proxy.proc.send_signal(signal.SIGTERM)
        await refused(proxy)  # the drain has begun
        go_on.set()
        answers = await asyncio.gather(*asked)
        assert await uploading == (200, len(upload))
    assert [a.status for a in answers] == [200, 200, 200]
    assert sorted(a.headers["X-Repro-Cache"] for a in answers) == ["HIT", "HIT", "MISS"]
    assert len({a.body for a in answers}) == 1
    assert len(chats(sim)) == 1  # the followers waited for the leader
    assert await exit_status(proxy) == 0
    await logged(log, '"stopping: every request finished","requests":4')
    clean(log)


def test_a_held_passthrough_answer_is_relayed_whole(tmp_path: Path) -> None:
    """A pass-through request whose upstream answers only after the signal."""
    log = tmp_path / "proxy.log"
    release = threading.Event()
    with (
        Scripted(held_until(release)) as upstream,
        log.open("wb") as sink,
        running_proxy(upstream.v1, stderr=sink) as proxy,
    ):
        try:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
                sock.sendall(
                    b"GET /v1/files/held HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Authorization: Bearer sk-tenant\r\n\r\n"
                )
                settled(
                    lambda: upstream.received, lambda r: any("held" in x.request_line for x in r)
                )
                proxy.proc.send_signal(signal.SIGTERM)
                asyncio.run(refused(proxy))  # the drain has begun
                release.set()
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
        finally:
            release.set()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert answer.endswith(b'\r\n{"object": "file"}\r\n0\r\n\r\n')  # chunked, to its end
        assert b"\r\nConnection: close\r\n" in answer
        assert proxy.proc.wait(EXIT_WITHIN) == 0
    clean(log)


def length(head: bytes) -> bytes:
    lines = head.lower().split(b"\r\n")
    return next(line for line in lines if line.startswith(b"content-length:")).split(b":")[1]


async def test_idle_connections_close_at_once_and_new_ones_are_refused(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """An idle keep-alive connection left open until the last request ends would have a client
    pool send its next request into a closing socket, or wait on it."""
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = start_proxy(stderr=sink)
    sim.settings(latency=3.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    await reader.readexactly(int(length(head)))  # the connection is idle now, kept alive
    async with client() as session:
        slow = asyncio.create_task(ask(session, proxy, "slow"))
        await arrived(sim, 1)
        proxy.proc.send_signal(signal.SIGTERM)
        closed = await asyncio.wait_for(reader.read(), 2.0)
        assert closed == b""
        assert not slow.done()  # closed while a request is still in flight, not after it
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", proxy.port)
        answer = await slow
    writer.close()
    assert answer.status == 200
    assert await exit_status(proxy) == 0
    clean(log)


async def test_a_stuck_upstream_is_cut_at_the_shutdown_timeout(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """aiohttp's own bound was 60 s, twice over; Kubernetes kills after 30 s by default,
    without a word in the log and without closing the store."""
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = start_proxy(env={"REPRO_SHUTDOWN_TIMEOUT": "2"}, stderr=sink)
    sim.fault(kind="hang", count=1)
    async with client() as session:
        stuck = asyncio.create_task(ask(session, proxy, "stuck"))
        await arrived(sim, 1)
        signalled = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        assert await exit_status(proxy, within=10) == 0
        took = time.monotonic() - signalled
        assert (await stuck).status == 503  # unanswered yet: told so (test_e2e_shape.py)
    assert 2.0 <= took < 6.0
    await logged(log, '"stopping: requests cut","requests":1,"by":"--shutdown-timeout"')
    await logged(log, '"msg":"stopped"')
    clean(log)


async def test_a_second_signal_cuts_the_drain_short(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = start_proxy("--shutdown-timeout", "60", stderr=sink)
    sim.fault(kind="hang", count=1)
    async with client() as session:
        stuck = asyncio.create_task(ask(session, proxy, "stuck twice"))
        await arrived(sim, 1)
        proxy.proc.send_signal(signal.SIGTERM)
        await logged(log, '"stopping: draining requests in flight","requests":1')
        proxy.proc.send_signal(signal.SIGINT)
        assert await exit_status(proxy, within=5) == 0
        assert (await stuck).status == 503
    await logged(log, '"stopping: requests cut","requests":1,"by":"a second signal"')
    clean(log)


@pytest.fixture
def group_proxy(sim: Sim, redis_url: str, tmp_path: Path) -> Iterator[tuple[Proxy, Path]]:
    """Two workers against Redis, in a process group of their own (as under a terminal)."""
    log = tmp_path / "proxy.log"
    with (
        log.open("wb") as sink,
        running_proxy(
            sim.v1, "--workers", "2", "--store", redis_url, stderr=sink, preexec_fn=os.setsid
        ) as proxy,
    ):
        # Up means one worker answers; the tests need both serving (and a signal that reaches
        # a worker still starting stops it before it serves anything).
        up = settled(lambda: log.read_text(errors="replace"), lambda t: t.count('"listening"') == 2)
        assert up.count('"listening"') == 2, up[-3000:]
        yield proxy, log


async def test_sigterm_to_the_supervisor_drains_every_worker_past_ten_seconds(
    group_proxy: tuple[Proxy, Path], sim: Sim, redis_url: str
) -> None:
    """The supervisor killed its workers 10 s after passing SIGTERM on, whatever they were
    answering: it now gives them --shutdown-timeout (25 s) and a margin to close."""
    proxy, log = group_proxy
    sim.settings(latency=11.0)
    asked = [asyncio.create_task(fresh(proxy, f"worker {n}")) for n in range(6)]
    await arrived(sim, 6)
    proxy.proc.send_signal(signal.SIGTERM)
    answers = await asyncio.gather(*asked)
    assert [a.status for a in answers] == [200] * 6
    assert {a.headers["X-Repro-Cache"] for a in answers} == {"MISS"}
    assert await exit_status(proxy) == 0
    await logged(log, '"msg":"stopping: every request finished"', count=2)  # each worker
    await logged(log, '"msg":"stopped"', count=2)
    clean(log)

    sim.settings(latency=0.0)
    with running_proxy(sim.v1, "--store", redis_url) as successor:
        again = [await fresh(successor, f"worker {n}") for n in range(6)]
    assert {a.headers["X-Repro-Cache"] for a in again} == {"HIT"}


async def test_ctrl_c_drains_the_workers_once(group_proxy: tuple[Proxy, Path], sim: Sim) -> None:
    """A terminal's Ctrl-C signals the whole group: each worker gets SIGINT, and SIGTERM from
    the supervisor right after; taken as two signals, that would cut what is in flight."""
    proxy, log = group_proxy
    sim.settings(latency=1.5)
    asked = [asyncio.create_task(fresh(proxy, f"ctrl-c {n}")) for n in range(4)]
    await arrived(sim, 4)
    os.killpg(proxy.proc.pid, signal.SIGINT)
    answers = await asyncio.gather(*asked)
    assert [a.status for a in answers] == [200] * 4
    assert await exit_status(proxy) == 0
    text = clean(log)
    assert "requests cut" not in text


async def test_a_second_signal_to_the_supervisor_cuts_every_worker_short(
    group_proxy: tuple[Proxy, Path], sim: Sim
) -> None:
    proxy, log = group_proxy
    sim.fault(kind="hang", count=4)
    asked = [asyncio.create_task(fresh(proxy, f"hung {n}")) for n in range(4)]
    await arrived(sim, 4)
    proxy.proc.send_signal(signal.SIGTERM)
    await refused(proxy)  # by every worker: each has begun its drain
    signalled = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    assert await exit_status(proxy, within=10) == 0
    assert time.monotonic() - signalled < 5.0
    assert [answer.status for answer in await asyncio.gather(*asked)] == [503] * 4
    cut = [orjson.loads(line) for line in log.read_text().splitlines() if "requests cut" in line]
    assert {line["by"] for line in cut} == {"a second signal"}
    assert sum(line["requests"] for line in cut) == 4  # however the kernel spread them


async def test_ctrl_c_while_the_workers_start_stops_them_without_a_traceback(
    sim: Sim, redis_url: str, tmp_path: Path
) -> None:
    """A worker ignored SIGINT only once its own code ran: a Ctrl-C while it still imported
    ended it with a KeyboardInterrupt traceback on the operator's terminal."""
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = launch_proxy(
            sim.v1, "--workers", "2", "--store", redis_url, stderr=sink, preexec_fn=os.setsid
        )
    try:
        await logged(log, '"msg":"workers started"')
        os.killpg(proxy.proc.pid, signal.SIGINT)  # while the workers import
        assert await exit_status(proxy) == 0
    finally:
        stop(proxy.proc)
    assert "listening" not in clean(log)  # it did land before they served
