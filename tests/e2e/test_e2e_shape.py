"""Every answer the proxy makes itself is in OpenAI's error shape, and no request reads two ways.

A real `repro-proxy serve` in front of the sim, raw aiohttp clients and sockets (the SDK hides
statuses and headers). aiohttp answered unknown paths (404), a method a route does not serve
(405) and CONNECT in plain text of its own; a proxy control header sent twice was read as its
first copy; a path an upstream would merge or decode into a cached route was forwarded
uncached and unseeded; a request cut at the end of the drain found its connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict
from yarl import URL

from bench.procs import settled
from tests.fixtures_procs import Proxy, ProxyFactory, Sim, raw_answer

CHAT = "/v1/chat/completions"
AUTH = {"Authorization": "Bearer sk-tenant"}
MARK = "zq-sent-by-client"
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


@contextlib.asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        yield session


def error_of(status: int, body: bytes, code: str) -> dict[str, object]:
    """The `error` of an OpenAI-shaped answer with `code`, quoting nothing the client sent."""
    assert MARK not in body.decode(errors="replace"), body
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == code, (status, error)
    return dict(error)


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", f"/{MARK}", 404, None),
        ("POST", f"/{MARK}/x?{MARK}=1", 404, None),
        ("GET", "/", 404, None),
        ("POST", "/healthz", 405, "GET,HEAD"),
        ("DELETE", "/readyz", 405, "GET,HEAD"),
        ("PUT", "/metrics", 405, "GET,HEAD"),
        ("PATCH", "/admin/stats", 405, "GET,HEAD"),
        ("GET", "/admin/purge", 405, "POST"),
        ("GET", "/admin/stats", 404, None),  # no --admin-token: the admin routes do not exist
    ],
)
async def test_what_no_route_serves_is_refused_in_openai_shape(
    proxy: Proxy, method: str, path: str, status: int, allow: str | None
) -> None:
    async with client() as session, session.request(method, proxy.url + path) as response:
        body = await response.read()
        assert response.status == status
        assert response.content_type == "application/json"
        assert response.headers.get("Allow") == allow
    error_of(status, body, "not_found" if status == 404 else "method_not_allowed")


@pytest.mark.parametrize("target", [b"example.com:443", CHAT.encode(), MARK.encode() + b":1"])
async def test_connect_is_refused_in_openai_shape_and_the_connection_closed(
    proxy: Proxy, target: bytes
) -> None:
    request = b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n"
    _, head, body = await asyncio.to_thread(raw_answer, proxy.port, request)  # the proxy closes it
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 405 Method Not Allowed", (head, body)
    headers = {name.lower(): value for name, _, value in (h.partition(": ") for h in lines[1:])}
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert "POST" in headers["allow"].split(",")
    assert "CONNECT" not in headers["allow"]
    error_of(405, body, "method_not_allowed")


@pytest.mark.parametrize("path", [f"/{MARK}", "/healthz"])
async def test_an_unmet_expectation_on_any_path_is_refused_in_openai_shape(
    proxy: Proxy, path: str
) -> None:
    """aiohttp's own 417 is plain text quoting the header; the proxy's routes had their own,
    but a path no route serves did not."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: {MARK}\r\n"
        "Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    _, head, body = await asyncio.to_thread(raw_answer, proxy.port, request.encode())
    assert head.startswith(b"HTTP/1.1 417 "), (head, body)
    error_of(417, body, "invalid_header")


async def test_a_control_header_sent_twice_with_two_values_is_refused(
    proxy: Proxy, sim: Sim
) -> None:
    twice = CIMultiDict(AUTH)
    twice.add("X-Repro-Namespace", "team-a")
    twice.add("X-Repro-Namespace", MARK)
    same = CIMultiDict(AUTH)
    same.add("X-Repro-Namespace", "team-a")
    same.add("X-Repro-Namespace", "team-a")
    async with client() as session:
        async with session.post(proxy.v1 + "/chat/completions", data=BODY, headers=twice) as r:
            status, body = r.status, await r.read()
        async with session.delete(proxy.v1 + "/responses/resp_abc", headers=twice) as r:
            by_id, by_id_body = r.status, await r.read()
        async with session.post(proxy.v1 + "/chat/completions", data=BODY, headers=same) as r:
            agreeing = r.status
    assert status == 400
    assert error_of(status, body, "invalid_header")["param"] == "X-Repro-Namespace"
    assert by_id == 400
    assert error_of(by_id, by_id_body, "invalid_header")["param"] == "X-Repro-Namespace"
    assert agreeing == 200  # copies that agree say one thing
    assert len(sim.llm_requests()) == 1


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("POST", "/v1//chat/completions", CHAT),
        ("POST", "/v1/chat/completions/", CHAT),
        ("POST", "/v1/chat//completions", CHAT),
        ("POST", "/v1/chat/completions;x=1", CHAT),
        ("POST", "/v1/chat/%2563ompletions", CHAT),
        ("POST", "/v1/chat%2Fcompletions", CHAT),
        ("POST", "/v1/./chat/completions", CHAT),
        ("POST", "/v1/Chat/Completions", CHAT),
        # how Windows servers (trailing dots, spaces), C servers (NUL), suffix patterns
        # (`.json`) and a zero-width space read it
        ("POST", "/v1/chat/completions.", CHAT),
        ("POST", "/v1/chat/completions%20", CHAT),
        ("POST", "/v1/chat/completions%00", CHAT),
        ("POST", "/v1/chat/completions.json", CHAT),
        ("POST", "/v1/chat/complet%E2%80%8Bions", CHAT),
        ("POST", "/v1/embeddings/", "/v1/embeddings"),
        ("GET", "/v1/responses//resp_abc", "/v1/responses/{id}"),
        (
            "POST",
            "/openai/deployments/d1//chat/completions?api-version=1",
            "/openai/deployments/{deployment}/chat/completions",
        ),
    ],
)
async def test_a_path_an_upstream_would_read_as_a_cached_route_is_refused(
    proxy: Proxy, sim: Sim, method: str, path: str, route: str
) -> None:
    """Forwarded, an upstream merging slashes or decoding escapes answered it as the route,
    uncached and without the default seed: the determinism promise silently skipped."""
    async with client() as session:
        url = URL(proxy.url + path, encoded=True)  # sent as written, dot segments too
        request = session.request(method, url, data=BODY, headers=AUTH)
        async with request as response:
            status, body = response.status, await response.read()
    assert status == 400
    error = error_of(status, body, "invalid_path")
    assert f"reads as {route}," in str(error["message"])
    assert sim.requests() == []


@pytest.mark.parametrize(
    ("flags", "headers"),
    [(("--cache-mode", "replay"), {}), ((), {"Cache-Control": "only-if-cached"})],
)
async def test_a_path_read_as_a_cached_route_is_named_before_replay_refuses_it(
    start_proxy: ProxyFactory, sim: Sim, flags: tuple[str, ...], headers: dict[str, str]
) -> None:
    """In replay mode (or with only-if-cached) `/v1//chat/completions` was refused as a
    pass-through the cache cannot answer (501 `replay_passthrough`, 504): the client was told to
    record, where its path was the mistake."""
    proxy = start_proxy(*flags)
    async with client() as session:
        url = URL(proxy.url + "/v1//chat/completions", encoded=True)
        async with session.post(url, data=BODY, headers={**AUTH, **headers}) as response:
            status, body = response.status, await response.read()
    assert status == 400
    assert f"reads as {CHAT}," in str(error_of(status, body, "invalid_path")["message"])
    assert sim.requests() == []


async def test_pass_through_paths_are_still_forwarded(proxy: Proxy, sim: Sim) -> None:
    async with client() as session:
        async with session.get(proxy.v1 + "/models", headers=AUTH) as r:
            assert r.status == 200
            assert r.headers["X-Repro-Cache"] == "BYPASS"
        async with session.post(proxy.v1 + "/chat/completions", data=BODY, headers=AUTH) as r:
            assert r.status == 200
            assert r.headers["X-Repro-Cache"] == "MISS"
    assert [r["path"] for r in sim.requests()] == ["/v1/models", CHAT]


async def arrived(sim: Sim, count: int) -> None:
    seen = await asyncio.to_thread(settled, sim.llm_requests, lambda r: len(r) >= count)
    assert len(seen) >= count, seen


async def test_a_request_unanswered_at_the_shutdown_timeout_gets_a_503(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """Its connection closed under it, a client cannot tell the cut from a crash; nginx sends
    a 503 on such a cut. The SDKs retry a 503, on a new connection."""
    with (tmp_path / "proxy.log").open("wb") as sink:
        proxy = start_proxy("--shutdown-timeout", "1", stderr=sink)
    sim.settings(latency=8.0)
    async with client() as session:
        ask = session.post(proxy.v1 + "/chat/completions", data=BODY, headers=AUTH)
        slow = asyncio.create_task(ask.__aenter__())
        await arrived(sim, 1)
        proxy.proc.send_signal(signal.SIGTERM)
        response = await slow
        body = await response.read()
        response.release()
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert response.headers["Connection"] == "close"
    error_of(503, body, "shutting_down")
    assert await asyncio.to_thread(proxy.proc.wait, 15) == 0


async def test_an_answer_begun_at_the_shutdown_timeout_is_only_cut(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """A stream whose head went out cannot become a 503: its connection is closed mid-body."""
    with (tmp_path / "proxy.log").open("wb") as sink:
        proxy = start_proxy("--shutdown-timeout", "1", stderr=sink)
    sim.settings(chunk_delay=3.0)
    streamed = orjson.dumps({**orjson.loads(BODY), "stream": True})
    url = proxy.v1 + "/chat/completions"
    async with client() as session, session.post(url, data=streamed, headers=AUTH) as r:
        assert r.status == 200
        await r.content.readany()  # the stream has begun
        proxy.proc.send_signal(signal.SIGTERM)
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    assert await asyncio.to_thread(proxy.proc.wait, 15) == 0
