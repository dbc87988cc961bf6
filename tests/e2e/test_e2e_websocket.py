"""WebSockets under /v1 (the Realtime API) through a real proxy process to the sim's realtime
socket, or to an upstream written here to misbehave: the official SDK's realtime client, and
raw aiohttp where the SDK hides what must be checked (close codes, subprotocols, statuses)."""

from __future__ import annotations

import asyncio
import signal
import ssl
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict
from openai import AsyncOpenAI

from bench.procs import free_port, settled
from tests.e2e.test_e2e_ui import browser_only, driver  # noqa: F401 (a fixture)
from tests.egress_peers import Authority, Tinyproxy, server_tls
from tests.fixtures_procs import Proxy, ProxyFactory, Sim
from tests.hostile import Scripted, fixed, http_answer

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0
HELLO = {
    "type": "conversation.item.create",
    "item": {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "hello there"}],
    },
}


@asynccontextmanager
async def opened(
    url: str, headers: dict[str, str] | None = None, **how: Any
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    headers = {"Authorization": "Bearer sk-rt"} if headers is None else headers
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            url, headers=headers, timeout=aiohttp.ClientWSTimeout(ws_close=WAIT), **how
        ) as ws,
    ):
        yield ws


async def event(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.receive(), WAIT)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    parsed: dict[str, Any] = orjson.loads(message.data)
    return parsed


async def ended(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    """The first message that is no event: how the socket ended."""
    while True:
        message = await asyncio.wait_for(ws.receive(), WAIT)
        if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            return message


async def handshake(
    url: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    """A handshake sent as plain HTTP, for the answer a refusal gives."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers, data=body, allow_redirects=False) as answer,
    ):
        return answer.status, CIMultiDict(answer.headers), await answer.read()


def realtime(proxy: Proxy, query: str = "?model=gpt-realtime") -> str:
    return proxy.v1.replace("http://", "ws://") + "/realtime" + query


def upgrade(key: str = "sk-rt") -> dict[str, str]:
    return {
        "Authorization": f"Bearer {key}",
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }


def closes(sim: Sim, count: int) -> list[int | None]:
    """The close codes of the sim's realtime sessions, once `count` have ended."""
    return settled(lambda: sim.stats()["realtime_closes"], lambda got: len(got) >= count, WAIT)


# --- what a user does -----------------------------------------------------------------------


async def test_the_sdk_realtime_client_talks_through_the_proxy(proxy: Proxy, sim: Sim) -> None:
    client = AsyncOpenAI(base_url=proxy.v1, api_key="sk-rt", max_retries=0)
    async with client.realtime.connect(
        model="gpt-realtime", extra_headers={"X-Repro-Namespace": "rt"}
    ) as connection:
        await connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await connection.conversation.item.create(item=HELLO["item"])  # type: ignore[arg-type]
        await connection.response.create()
        said, kinds = [], []
        async for server_event in connection:
            kinds.append(server_event.type)
            if server_event.type == "response.output_text.delta":
                said.append(server_event.delta)
            if server_event.type == "response.done":
                break
    await client.close()
    assert kinds[0] == "session.created" and "session.updated" in kinds
    assert "".join(said) == "You said: hello there"
    (asked,) = [r for r in sim.requests() if r["path"] == "/v1/realtime"]
    assert asked["method"] == "GET" and asked["query"] == "model=gpt-realtime"
    assert asked["headers"]["Authorization"] == "Bearer sk-rt"
    assert not any(name.lower().startswith("x-repro-") for name in asked["headers"])
    assert closes(sim, 1) == [1000]  # the SDK's close reached the upstream
    assert proxy.metric_reaching("repro_requests_total", 1, route="/v1/*", cache="bypass") == 1


async def test_a_browser_key_in_a_subprotocol_is_relayed_and_never_logged(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Any
) -> None:
    """Browsers set no header on a WebSocket: OpenAI reads the key from a subprotocol. The
    upstream chooses the protocol; the key stays out of the proxy's log."""
    log = (tmp_path / "proxy.log").open("wb")
    proxy = start_proxy(stderr=log)
    secret = "sk-in-a-protocol-7f3a"
    protocols = ("realtime", f"openai-insecure-api-key.{secret}")
    async with opened(realtime(proxy), headers={}, protocols=protocols) as ws:
        assert ws.protocol == "realtime"
        assert (await event(ws))["type"] == "session.created"
        await ws.send_str(orjson.dumps({"type": "no.such.event"}).decode())
        assert (await event(ws))["error"]["code"] == "unknown_event"
    (asked,) = [r for r in sim.requests() if r["path"] == "/v1/realtime"]
    assert secret in asked["headers"]["Sec-WebSocket-Protocol"]
    log.close()
    assert secret not in (tmp_path / "proxy.log").read_text()


async def test_binary_and_unicode_messages_cross_unchanged(proxy: Proxy, sim: Sim) -> None:
    blob = bytes(range(256)) * 40
    async with opened(realtime(proxy)) as ws:
        await event(ws)
        await ws.send_bytes(blob)
        echoed = await asyncio.wait_for(ws.receive(), WAIT)
        assert echoed.type is aiohttp.WSMsgType.BINARY and echoed.data == blob
        await ws.send_str(
            orjson.dumps(
                {
                    **HELLO,
                    "item": {
                        **HELLO["item"],
                        "content": [{"type": "input_text", "text": "سلام 👋"}],
                    },
                }
            ).decode()
        )
        added = await event(ws)
        assert added["item"]["content"][0]["text"] == "سلام 👋"


async def test_close_codes_cross_both_ways(proxy: Proxy, sim: Sim) -> None:
    async with opened(realtime(proxy)) as ws:
        await event(ws)
        await ws.send_str(
            orjson.dumps({"type": "sim.close", "code": 4001, "reason": "bye"}).decode()
        )
        end = await ended(ws)
        assert end.type is aiohttp.WSMsgType.CLOSE and (end.data, end.extra) == (4001, "bye")
    async with opened(realtime(proxy)) as ws:
        await event(ws)
        await ws.close(code=4002, message=b"done here")
    assert closes(sim, 2)[-1] == 4002  # the client's own code reached the upstream


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_sessions_length_is_counted_apart_from_request_latency(
    start_proxy: ProxyFactory, sim: Sim, workers: int, request: pytest.FixtureRequest
) -> None:
    """Minutes of talk must not read as the pass-through's latency on the dashboard: the
    request took its handshake; the session has a histogram, and a gauge while open (summed
    over the workers that are alive, when several share the metrics)."""
    shared = ("--workers", "2", "--store", request.getfixturevalue("redis_url"))
    proxy = start_proxy(*shared) if workers == 2 else start_proxy()
    held = 2.0
    async with opened(realtime(proxy)) as ws:
        await event(ws)
        assert proxy.metric("repro_websockets_open") == 1
        await asyncio.sleep(held)
    assert settled(lambda: proxy.metric("repro_websockets_open"), lambda v: v == 0, WAIT) == 0
    assert proxy.metric("repro_websocket_session_seconds_count") == 1
    assert held <= proxy.metric("repro_websocket_session_seconds_sum") < held + WAIT
    assert proxy.metric("repro_websocket_session_seconds_bucket", le="1.0") == 0
    assert proxy.metric("repro_websocket_session_seconds_bucket", le="10.0") == 1
    bypass = {"route": "/v1/*", "cache": "bypass"}
    assert proxy.metric("repro_requests_total", **bypass) == 1
    assert proxy.metric("repro_request_duration_seconds_count", **bypass) == 1
    assert proxy.metric("repro_request_duration_seconds_sum", **bypass) < 1.0


async def test_azure_realtime_route_passes_through(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy(upstream=sim.url)  # Azure: the resource's root
    url = (
        proxy.url.replace("http://", "ws://")
        + "/openai/realtime?api-version=2025-04-01-preview&deployment=rt-deploy"
    )
    async with opened(url, headers={"api-key": "az-key"}) as ws:
        created = await event(ws)
        assert created["session"]["model"] == "rt-deploy"
    (asked,) = [r for r in sim.requests() if r["path"] == "/openai/realtime"]
    assert asked["headers"]["api-key"] == "az-key"


async def test_the_upstreams_refusal_reaches_the_client_as_its_answer(
    proxy: Proxy, sim: Sim
) -> None:
    """A wrong key: the client reads the upstream's own 401 and its words, as on any route."""
    sim.accept_keys("sk-good")
    status, headers, body = await handshake(
        realtime(proxy).replace("ws://", "http://"), upgrade("sk-wrong")
    )
    assert status == 401 and headers["X-Repro-Cache"] == "BYPASS"
    assert orjson.loads(body)["error"]["message"] == "Incorrect API key provided."
    sim.fault(kind="status", status=429, headers={"retry-after": "7"}, count=1)
    status, headers, body = await handshake(
        realtime(proxy).replace("ws://", "http://"), upgrade("sk-good")
    )
    assert (status, headers["retry-after"]) == (429, "7")
    assert orjson.loads(body)["error"]["message"] == "Simulated error 429."


async def test_an_upstream_that_drops_or_hangs_the_handshake_is_a_gateway_error(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """As on any route: a dropped socket is a 502 (a handshake is a GET, which the client
    library sends once more on a dropped connection), a silent one a 504 after the timeout."""
    proxy = start_proxy("--upstream-timeout", "1")
    url = realtime(proxy).replace("ws://", "http://")
    sim.fault(kind="drop", count=2)
    status, _, body = await handshake(url, upgrade())
    assert status == 502 and orjson.loads(body)["error"]["code"] == "upstream_unreachable"
    sim.fault(kind="hang", count=1)
    began = time.monotonic()
    status, _, body = await handshake(url, upgrade())
    assert status == 504 and orjson.loads(body)["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - began < WAIT
    async with opened(realtime(proxy)) as ws:  # the faults are spent: the next one opens
        assert (await event(ws))["type"] == "session.created"


async def test_replay_mode_and_only_if_cached_never_open_one(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    replaying = start_proxy("--cache-mode", "replay")
    url = realtime(replaying).replace("ws://", "http://")
    status, _, body = await handshake(url, upgrade())
    assert status == 501 and orjson.loads(body)["error"]["code"] == "replay_passthrough"
    proxy = start_proxy()
    url = realtime(proxy).replace("ws://", "http://")
    status, _, body = await handshake(url, {**upgrade(), "Cache-Control": "only-if-cached"})
    assert status == 504 and orjson.loads(body)["error"]["code"] == "cache_miss"
    assert not [r for r in sim.requests() if r["path"] == "/v1/realtime"]


# --- what an attacker does ------------------------------------------------------------------


async def test_a_message_over_max_body_ends_the_session_both_ways(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy("--max-body", "65536")
    async with opened(realtime(proxy)) as ws:
        await event(ws)
        await ws.send_bytes(b"x" * 70_000)
        end = await ended(ws)
        assert ws.close_code == 1009, end
    assert closes(sim, 1) == [1001]  # the upstream is told its client went away
    async with opened(realtime(proxy)) as ws:  # the upstream's message over the bound
        await event(ws)
        await ws.send_str(orjson.dumps({"type": "sim.big", "bytes": 70_000}).decode())
        await ended(ws)
        assert ws.close_code == 1014  # bad gateway: the upstream's failure
    assert closes(sim, 2)[-1] == 1009


async def test_handshakes_that_are_not_one_are_refused_before_the_upstream(
    proxy: Proxy, sim: Sim
) -> None:
    url = realtime(proxy).replace("ws://", "http://")
    status, _, body = await handshake(url, upgrade(), body=b"GET /v1/models HTTP/1.1\r\n\r\n")
    assert status == 400 and orjson.loads(body)["error"]["code"] == "invalid_body"
    incomplete = {k: v for k, v in upgrade().items() if k != "Sec-WebSocket-Key"}
    status, _, body = await handshake(url, incomplete)
    assert status == 400 and orjson.loads(body)["error"]["code"] == "invalid_header"
    assert not [r for r in sim.requests() if r["path"] == "/v1/realtime"]


async def test_an_upstream_faking_the_switch_gets_a_502(start_proxy: ProxyFactory) -> None:
    """A 101 without the handshake's proof (Sec-WebSocket-Accept) is no WebSocket."""
    fake = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: forged\r\n\r\n"
    )
    with Scripted(fixed(fake)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        status, _, body = await handshake(realtime(proxy).replace("ws://", "http://"), upgrade())
    assert status == 502 and orjson.loads(body)["error"]["code"] == "upstream_unreachable"


async def test_a_refusal_too_long_to_relay_keeps_its_status(start_proxy: ProxyFactory) -> None:
    huge = http_answer(b"x" * 200_000, "Content-Type: text/plain", status="403 Forbidden")
    with Scripted(fixed(huge)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        status, headers, body = await handshake(
            realtime(proxy).replace("ws://", "http://"), upgrade()
        )
    assert status == 403 and headers["Content-Type"] == "application/json"
    assert orjson.loads(body)["error"]["code"] == "websocket_refused"


@pytest.mark.parametrize("status", ["302 Found", "307 Temporary Redirect"])
async def test_a_redirected_handshake_is_relayed_never_followed(
    start_proxy: ProxyFactory, status: str
) -> None:
    """aiohttp's `ws_connect` follows redirects, and drops only `Authorization` and cookies
    on the way: the client's `api-key` went to whatever host, path or plain-http URL the
    upstream named, ten times over. The redirect is the upstream's answer to the client."""
    with Scripted(fixed(http_answer(b"", "Content-Type: text/plain"))) as elsewhere:
        moved = f"Location: http://127.0.0.1:{elsewhere.port}/stolen"
        with Scripted(fixed(http_answer(b"moved", moved, status=status))) as upstream:
            proxy = start_proxy(upstream=upstream.v1)
            headers = {**upgrade(), "api-key": "sk-azure-secret", "x-api-key": "sk-gateway"}
            answer, answered, body = await handshake(
                realtime(proxy).replace("ws://", "http://"), headers
            )
            assert len(upstream.received) == 1
        assert elsewhere.received == []
    assert answer == int(status.split()[0]) and body == b"moved"
    assert answered["Location"] == f"http://127.0.0.1:{elsewhere.port}/stolen"


async def test_an_upstream_that_never_answers_the_handshake_times_out(
    start_proxy: ProxyFactory,
) -> None:
    async def silent(writer: asyncio.StreamWriter, _: Any) -> None:
        await asyncio.sleep(30)

    with Scripted(silent) as upstream:
        proxy = start_proxy("--upstream-timeout", "1", upstream=upstream.v1)
        began = time.monotonic()
        status, _, body = await handshake(realtime(proxy).replace("ws://", "http://"), upgrade())
    assert status == 504 and orjson.loads(body)["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - began < 5


async def test_a_stop_closes_open_sessions_at_once(start_proxy: ProxyFactory, sim: Sim) -> None:
    """SIGTERM: each client is told 1001 (going away) now, not cut when the drain ends."""
    proxy = start_proxy("--shutdown-timeout", "20")
    async with opened(realtime(proxy)) as ws:
        await event(ws)
        began = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        await ended(ws)
        assert ws.close_code == 1001
    assert time.monotonic() - began < 5
    assert closes(sim, 1) == [1001]
    proxy.proc.wait(WAIT)
    assert proxy.proc.returncode == 0


async def test_a_session_outlives_the_upstream_timeout(start_proxy: ProxyFactory, sim: Sim) -> None:
    """--upstream-timeout bounds a handshake and an answer's silences; a conversation may go
    quiet for longer (heartbeat pings find a dead upstream instead)."""
    proxy = start_proxy("--upstream-timeout", "1")
    async with opened(realtime(proxy)) as ws:
        await event(ws)
        await asyncio.sleep(2.5)
        await ws.send_str(orjson.dumps(HELLO).decode())
        assert (await event(ws))["type"] == "conversation.item.added"


class Accepting:
    """An upstream that opens a WebSocket for anyone, browsers too (the sim refuses pages),
    saying "opened" and the Origin it was sent; in a thread of its own, on 127.0.0.1."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.tls = tls
        self.origins: list[str | None] = []
        self._open: set[web.WebSocketResponse] = set()

    @property
    def v1(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/v1"

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        self.origins.append(request.headers.get("Origin"))
        socket = web.WebSocketResponse(protocols=("realtime",))
        await socket.prepare(request)
        self._open.add(socket)
        await socket.send_str("opened")
        async for _ in socket:
            pass
        self._open.discard(socket)
        return socket

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/realtime", self._socket)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.tls).start()

    def __enter__(self) -> Accepting:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(WAIT)
        return self

    async def _stop(self) -> None:
        """Sockets a client left open (a page's) closed first: the runner would wait for them."""
        await asyncio.gather(*(socket.close() for socket in self._open), return_exceptions=True)
        await self._runner.cleanup()

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(WAIT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT)
        self._loop.close()


async def test_a_page_of_another_origin_opens_no_websocket(start_proxy: ProxyFactory) -> None:
    """CORS does not cover WebSockets: a page of any site could read every message."""
    with Accepting() as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        url = realtime(proxy).replace("ws://", "http://")
        others = ["http://evil.example", "null", proxy.url.replace("127.0.0.1", "localhost")]
        others.append(proxy.url.replace("http://", "https://"))  # same host and port, not origin
        for origin in others:
            status, _, body = await handshake(url, {**upgrade(), "Origin": origin})
            assert status == 403 and orjson.loads(body)["error"]["code"] == "cross_site_request"
        assert upstream.origins == []
        async with opened(realtime(proxy), origin=proxy.url) as ws:  # the proxy's own origin
            assert (await asyncio.wait_for(ws.receive(), WAIT)).data == "opened"
        assert upstream.origins == [proxy.url]


async def test_an_origin_on_a_default_port_is_told_apart_by_its_scheme(
    start_proxy: ProxyFactory,
) -> None:
    """Reached without a port in Host (published on :80), the proxy's origin is
    http://localhost: a page of https://localhost (another server, on :443) is another origin
    that named the same host and no port. Behind a terminator that says the request came over
    TLS, https://localhost is the proxy's own."""
    with Accepting() as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        url = realtime(proxy).replace("ws://", "http://")
        plain = {**upgrade(), "Host": "localhost", "Origin": "https://localhost"}
        status, _, body = await handshake(url, plain)
        assert status == 403 and orjson.loads(body)["error"]["code"] == "cross_site_request"
        assert upstream.origins == []
        for said in ({"X-Forwarded-Proto": "https"}, {"Forwarded": "for=192.0.2.1;proto=https"}):
            status, _, _ = await handshake(url, {**plain, **said})
            assert status == 101, said
        status, _, _ = await handshake(
            url, {**upgrade(), "Host": "localhost", "Origin": "http://localhost"}
        )
        assert status == 101
        assert upstream.origins == ["https://localhost", "https://localhost", "http://localhost"]


OPENS = """
const [url, done] = arguments;
const socket = new WebSocket(url, ["realtime", "openai-insecure-api-key.sk-page"]);
socket.onmessage = (e) => done("read: " + e.data);
socket.onerror = () => done("refused");
"""


@browser_only
def test_a_page_in_a_real_browser_cannot_hijack_a_session(
    start_proxy: ProxyFactory,
    sim: Sim,
    driver: Any,  # noqa: F811
) -> None:
    driver.set_script_timeout(20)
    with Accepting() as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        driver.get(sim.url + "/_sim/stats")  # a page of another origin than the proxy's
        said = driver.execute_async_script(OPENS, realtime(proxy))
        driver.get(proxy.url + "/healthz")  # a page of the proxy's own origin
        own = driver.execute_async_script(OPENS, realtime(proxy))
        driver.get("about:blank")  # the page's socket closed before the upstream stops
    assert (said, own) == ("refused", "read: opened")
    assert upstream.origins == [proxy.url]


async def test_wss_through_a_forward_proxy_with_the_proxys_client_certificate(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """The egress settings hold for a WebSocket as for any request: HTTPS_PROXY (a CONNECT
    through tinyproxy), --upstream-ca, and the client certificate the upstream asks for."""
    ca = Authority.create(tmp_path, "corporate-ca")
    served, identity = (
        ca.issue(tmp_path, "upstream", server=True),
        ca.issue(tmp_path, "client", server=False),
    )
    tls = server_tls(served, client_ca=ca.pem)
    with Accepting(tls) as upstream, Tinyproxy(tmp_path) as forward:
        proxy = start_proxy(
            *("--upstream-ca", str(ca.pem)),
            *("--upstream-cert", str(identity.cert), "--upstream-key", str(identity.key)),
            upstream=upstream.v1,
            env={"HTTPS_PROXY": forward.url},
        )
        async with opened(realtime(proxy)) as ws:
            assert (await asyncio.wait_for(ws.receive(), WAIT)).data == "opened"
        assert forward.requests() == [f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1"]


async def test_the_sims_realtime_socket_survives_junk_events(proxy: Proxy, sim: Sim) -> None:
    """The sim is a peer tests lean on: what a careless client sends gets an answer, not a
    crash, and the session goes on."""
    async with opened(realtime(proxy)) as ws:
        await event(ws)
        for junk in ('{"type": "session.update", "session": [1]}', "[]", "{", '"text"'):
            await ws.send_str(junk)
            answered = await event(ws)
            assert answered["type"] in ("session.updated", "error"), answered
        await ws.send_str('{"type": "conversation.item.create", "item": "nothing"}')
        added, done = await event(ws), await event(ws)
        assert (added["type"], done["item"]["status"]) == ("conversation.item.added", "completed")
        await ws.send_str('{"type": "sim.big", "bytes": "lots"}')
        assert (await asyncio.wait_for(ws.receive(), WAIT)).data == ""
        await ws.send_str('{"type": "sim.close", "code": "soon", "reason": 7}')
        end = await ended(ws)
        assert (end.data, end.extra) == (1000, "7")
