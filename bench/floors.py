"""The floors: what bare aiohttp does in a few lines, to measure the proxy against.

    python bench/floors.py dict        --port P --upstream http://127.0.0.1:S/v1
    python bench/floors.py redis       --port P --upstream ... --redis redis://127.0.0.1:R/1
    python bench/floors.py passthrough --port P --upstream ...
    python bench/floors.py relay       --port P --upstream ...
    python bench/floors.py caching     --port P --upstream ...

`dict` answers from a dict keyed by the raw request body; `redis` does one GET per request
(redis-py's asyncio client, hiredis parser); `passthrough` forwards every request with one
keep-alive ClientSession and answers with the upstream's body (a stream chunk by chunk, as it
comes). `dict` and `redis` fill themselves through the upstream on a miss, so the benchmark
warms them like the proxy; the hit path is the floor. They answer `X-Repro-Cache: HIT|MISS` as
the proxy does, so the benchmark verifies them the same way, and count what they served at
`GET /_floor/stats`. Plain asyncio loop, no logging, no access log: the least a Python server
can do per request.

`caching` is a minimal caching proxy: the work any cache of this stack does on a request (parse,
seed, canonical form, SHA-256; on a miss, the answer parsed, zstd, a dict), and nothing else. It
is not a floor the proxy is held to, but how much of the proxy's distance from the pass-through
and dict floors no design of it could remove.

`relay` parses no HTTP at all: it copies bytes between each client connection and an upstream
connection of its own. It is what a Python hop costs below HTTP (the loopback, the wake-ups,
the event loop), so the first byte through it shows how much of an HTTP hop's cost is the HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from collections import Counter
from typing import cast
from urllib.parse import urlsplit

import aiohttp
import orjson
import redis.asyncio
import redis.utils
import zstandard
from aiohttp import web

ROUTE = "/v1/{tail:.*}"
HIT = {"X-Repro-Cache": "HIT"}
MISS = {"X-Repro-Cache": "MISS"}
JSON = "application/json"
FORWARDED = ("Authorization", "Content-Type")


def base_app(upstream: str) -> tuple[web.Application, Counter[str], list[aiohttp.ClientSession]]:
    """An app with /_floor/stats and one keep-alive ClientSession to the upstream."""
    app, stats, session = web.Application(), Counter[str](), []

    async def open_session(app: web.Application) -> None:
        session.append(aiohttp.ClientSession(upstream.rstrip("/").removesuffix("/v1")))

    async def close_session(app: web.Application) -> None:
        await session[0].close()

    async def show_stats(request: web.Request) -> web.Response:
        return web.json_response(dict(stats))

    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_get("/_floor/stats", show_stats)
    app.router.add_get("/healthz", show_stats)
    return app, stats, session


async def fetch(
    session: aiohttp.ClientSession, request: web.Request, body: bytes
) -> tuple[int, bytes, str]:
    """Send the request on to the upstream; its status, body and Content-Type."""
    async with session.request(
        request.method, request.path, data=body, headers=forwarded(request)
    ) as up:
        return up.status, await up.read(), up.headers.get("Content-Type", "application/json")


def forwarded(request: web.Request) -> dict[str, str]:
    return {h: request.headers[h] for h in FORWARDED if h in request.headers}


def answer(status: int, data: bytes, kind: str, cache: dict[str, str]) -> web.Response:
    return web.Response(body=data, status=status, headers={"Content-Type": kind, **cache})


def dict_floor(upstream: str, _: str) -> web.Application:
    app, stats, session = base_app(upstream)
    stored: dict[bytes, tuple[bytes, str]] = {}

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        found = stored.get(body)
        if found is not None:
            stats["hit"] += 1
            return answer(200, found[0], found[1], HIT)
        stats["miss"] += 1
        status, data, kind = await fetch(session[0], request, body)
        if status == 200:
            stored[body] = (data, kind)
        return answer(status, data, kind, MISS)

    app.router.add_post(ROUTE, handle)
    return app


def redis_floor(upstream: str, redis_url: str) -> web.Application:
    if not redis.utils.HIREDIS_AVAILABLE:
        raise SystemExit("the redis floor needs hiredis (pip install hiredis)")
    app, stats, session = base_app(upstream)
    client = redis.asyncio.Redis.from_url(redis_url)
    sse = b"s"  # first byte of the stored value: s = text/event-stream, j = application/json

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        found = await client.get(body)
        if found is not None:
            stats["hit"] += 1
            kind = "text/event-stream" if found[:1] == sse else "application/json"
            return answer(200, found[1:], kind, HIT)
        stats["miss"] += 1
        status, data, kind = await fetch(session[0], request, body)
        if status == 200:
            await client.set(body, (sse if kind.startswith("text/event") else b"j") + data)
        return answer(status, data, kind, MISS)

    app.router.add_post(ROUTE, handle)
    return app


def passthrough_floor(upstream: str, _: str) -> web.Application:
    """Buffered answers whole, as the proxy's MISS; streamed ones chunk by chunk as they come,
    the floor of a stream's first byte through one hop."""
    app, stats, session = base_app(upstream)

    async def handle(request: web.Request) -> web.StreamResponse:
        stats["forwarded"] += 1
        body = await request.read()
        async with session[0].request(
            request.method, request.path, data=body, headers=forwarded(request)
        ) as up:
            kind = up.headers.get("Content-Type", "application/json")
            if not kind.startswith("text/event-stream"):
                return answer(up.status, await up.read(), kind, {})
            response = web.StreamResponse(status=up.status, headers={"Content-Type": kind})
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.router.add_route("*", ROUTE, handle)
    return app


def caching_floor(upstream: str, _: str) -> web.Application:
    """The least any caching proxy of this stack does per request, and nothing else: parse the
    body, inject a seed, respell it canonically, hash it with the route; on a miss relay the
    respelled body over one ClientSession, parse the answer for its fingerprint, compress the
    request and the answer with zstd and keep them in a dict under the key and fingerprint. No
    tenant, no key check, no coalescing, metrics, header checks or fail-open store: the part of
    the proxy's miss (and HIT) that no design of it can remove, measured against the bare
    floors."""
    app, stats, session = base_app(upstream)
    stored: dict[tuple[str, str], bytes] = {}
    current = {"fingerprint": ""}
    pack = zstandard.ZstdCompressor(level=1).compress
    unpack = zstandard.ZstdDecompressor().decompress

    async def handle(request: web.Request) -> web.Response:
        asked = orjson.loads(await request.read())
        asked.setdefault("seed", 12345)
        body = orjson.dumps(asked, option=orjson.OPT_SORT_KEYS)
        key = hashlib.sha256(request.path.encode() + b"\0" + body).hexdigest()
        blob = stored.get((key, current["fingerprint"]))
        if blob is not None:
            stats["hit"] += 1
            entry = unpack(blob)
            return answer(200, entry[4 + int.from_bytes(entry[:4], "big") :], JSON, HIT)
        stats["miss"] += 1
        async with session[0].post(request.path, data=body, headers=forwarded(request)) as up:
            status, data = up.status, await up.read()
        if status == 200:
            fingerprint = orjson.loads(data).get("system_fingerprint") or ""
            current["fingerprint"] = fingerprint
            stored[key, fingerprint] = pack(len(body).to_bytes(4, "big") + body + data)
        return answer(status, data, JSON, MISS)

    app.router.add_post(ROUTE, handle)
    return app


FLOORS = {
    "dict": dict_floor,
    "redis": redis_floor,
    "passthrough": passthrough_floor,
    "caching": caching_floor,
}


class _Pipe(asyncio.Protocol):
    """One side of a relayed connection: what it reads goes out on the other side's transport.
    Reading pauses while the other side cannot take more, and either side closing closes both."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.out: asyncio.Transport | None = None  # the other side's, once both are connected
        self.early: list[bytes] = []  # read before that

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def joined(self, out: asyncio.Transport) -> None:
        self.out = out
        for data in self.early:
            out.write(data)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.out is None:
            self.early.append(data)
        else:
            self.out.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.out is not None:
            self.out.close()

    def pause_writing(self) -> None:  # our transport is full: stop reading what fills it
        if self.out is not None:
            self.out.pause_reading()

    def resume_writing(self) -> None:
        if self.out is not None:
            self.out.resume_reading()


async def relay(upstream: str, port: int) -> None:
    target = urlsplit(upstream)
    host, upstream_port = target.hostname or "127.0.0.1", target.port or 80
    loop = asyncio.get_running_loop()

    async def join(client: _Pipe) -> None:
        """Runs before the client's `connection_made`: its transport is known only after the
        connect has waited."""
        try:
            up, server = await loop.create_connection(_Pipe, host, upstream_port)
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        if client.transport is None or client.transport.is_closing():  # the client left
            up.close()
            return
        server.joined(client.transport)
        client.joined(up)

    def accept() -> _Pipe:
        client = _Pipe()
        tasks.add(task := loop.create_task(join(client)))
        task.add_done_callback(tasks.discard)
        return client

    tasks: set[asyncio.Task[None]] = set()
    listening = await loop.create_server(accept, "127.0.0.1", port)
    async with listening:
        await listening.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=sorted([*FLOORS, "relay"]))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL with its /v1")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/1", help="for the redis floor")
    args = parser.parse_args()
    if args.kind == "relay":
        asyncio.run(relay(args.upstream, args.port))
        return
    app = FLOORS[args.kind](args.upstream, args.redis)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
