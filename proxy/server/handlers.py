"""Routes: each reads the request, calls the pieces that decide and fetch, and answers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.core import routes
from proxy.core.call import Asked, Call, repro_headers
from proxy.core.credentials import Carriers, hop_by_hop, of_request
from proxy.core.entry import AUDIO, Entry
from proxy.core.paths import forward_target, raw_query
from proxy.core.policy import (
    STALE_STATUSES,
    CacheMode,
    CacheScope,
    Outcome,
    parse_cache_control,
)
from proxy.core.weight import OFF_LOOP_BODY, heavy
from proxy.errors import (
    CacheMissError,
    InvalidHeader,
    ReplayPassthrough,
    UpstreamError,
)
from proxy.server import bodies, own_route, reads, websocket
from proxy.server.caching import (
    forward,
    lookup,
    lookup_or_lock,
    prepare,
    prepare_aside,
    remember,
    remembered,
    serve_hit,
    stale_entry,
)
from proxy.server.caller import MAX_SHOWN_PATH
from proxy.server.chains import continuable
from proxy.server.coalesce import Lease
from proxy.server.context import SERVICES, Services
from proxy.server.recording import held_by_id, hold
from proxy.server.sound import forward_sound
from proxy.server.streaming import CLIENT_GONE, forward_stream
from proxy.server.unframed import Unframed
from proxy.store.base import StoreError
from proxy.upstream.client import StreamedBody
from proxy.upstream.headers import REQUEST_SKIP, request_headers, response_headers

log = logging.getLogger("proxy.handlers")


async def cacheable(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    settings = services.settings
    route, query = request.path, raw_query(request.raw_path)
    if routes.is_azure(route):
        route, query = routes.azure_target(route, request.raw_path, query)
    check_credential_headers(request, Carriers(services.credential_names))
    raw = bodies.whole(request, settings.max_body)
    if raw is None:
        raw = await bodies.read(request, settings.max_body, settings.body_timeout, services.reading)
    if services.secret.provisional:
        await services.secret.settle()
    asked = Asked.of(route, query, raw, request.headers, services.credential_names, services.keying)
    if len(raw) >= OFF_LOOP_BODY:  # never remembered: hashing it would hold the loop too
        return await answer(services, request, await prepare_aside(services, asked))
    call = remembered(services, asked)
    if call is not None:
        return await answer(services, request, call)
    call = await prepare_aside(services, asked) if heavy(raw) else prepare(services, asked)
    response = await answer(services, request, call)
    if response.headers.get("X-Repro-Cache") == Outcome.HIT.value:
        remember(services, asked, call)
    return response


def check_credential_headers(request: web.Request, carriers: Carriers) -> None:
    """Refuse a credential header the proxy would strip while the tenant is made of it: one
    that Connection names as hop-by-hop."""
    named = hop_by_hop(request.headers.getall("Connection", ()), carriers)
    if named is not None:
        raise InvalidHeader(
            f"The Connection header names {named}, a credential: the proxy would remove it "
            "before forwarding, and answer for credentials the upstream never saw.",
            "Connection",
        )


async def answer(services: Services, request: web.Request, call: Call) -> web.StreamResponse:
    """A HIT when allowed and found; else the upstream, once for identical concurrent misses;
    counted once its outcome is known: only a served request names its model (see
    `Metrics.of`), and only a served model is worth probing. One coroutine, not two: a HIT pays
    for each.

    In `shared` scope the key is checked before the lookup, not only before a HIT: a caller the
    upstream refuses would otherwise learn whether anyone asked its question before (a key check
    made only when something is stored) or is asking it now (a follower waiting for the fill in
    flight). In `key` scope a caller looks only into its own partition. A request continuing
    a response the cache may not continue for this caller (proxy/server/chains.py) is the
    upstream's to answer, never a stored answer's, stale ones included."""
    served = False
    try:
        chained, reads = call.chained, call.plan.lookup or call.stale_if_error > 0
        if chained is not None and reads and not await continuable(services, call, chained):
            call = unlooked(call)._replace(stale_if_error=0)
        shared = services.settings.cache_scope is CacheScope.SHARED
        if not call.plan.lookup:
            response = await go_upstream(services, request, call)
        elif shared and not await key_accepted(services, request, call):
            response = await go_upstream(services, request, unlooked(call))
        elif coalesces(services, call):
            response = await fill(services, request, call)
        elif (entry := await lookup(services, call)) is not None:
            response = await serve_if_trusted(services, request, call, entry)
        else:
            response = await go_upstream(services, request, call)
        served = is_served(response)
    finally:
        if call.seed_source == "default":
            services.metrics.of(call.counted, served).seed_injected.inc()
        if served and not routes.routed(call.lineage):
            services.prober.requested(call.model, call.route)
    return response


def is_served(response: web.StreamResponse) -> bool:
    """An answer from the cache (HIT, STALE) or a 2xx from the upstream."""
    return 200 <= response.status < 300


def unlooked(call: Call) -> Call:
    return call._replace(plan=replace(call.plan, lookup=False))


def coalesces(services: Services, call: Call) -> bool:
    """Only stored, non-streamed misses wait for a leader: a stream follower would lose its
    first token to the leader's whole stream, so identical streams each go upstream, and so
    does speech, relayed as it comes (`proxy.server.sound`)."""
    relayed = call.stream or call.shape == AUDIO
    return services.coalescer.enabled and call.plan.store and call.plan.upstream and not relayed


async def serve_if_trusted(
    services: Services, request: web.Request, call: Call, entry: Entry
) -> web.StreamResponse:
    """A HIT goes only to a key the upstream accepts; any other key is the upstream's to answer."""
    if known(services, call) or await key_accepted(services, request, call):
        services.verifier.sample(call, entry, request.headers)
        if held_by_id(call):  # any other HIT awaits nothing more
            await hold(services, call)
        return serve_hit(services, call, entry)
    return await go_upstream(services, request, unlooked(call))


KEY_VERDICT = web.RequestKey("repro_key_verdict", bool)
"""A request's key check, made at most once: a hung upstream then costs a HIT one
`--key-check-timeout`, not one per place that asks (before the lookup, the HIT, a stale one)."""


def known(services: Services, call: Call) -> bool:
    """`key_accepted` when it need not wait, as for nearly every HIT: an accepted key's verdict
    still fresh. A HIT then awaits nothing more (a coroutine each costs it measurable CPU)."""
    return services.keys.known(call) is True


async def key_accepted(services: Services, request: web.Request, call: Call) -> bool:
    """Credentials the upstream refuses read nothing; replay mode never asks the upstream."""
    settings = services.settings
    if not services.keys.enabled or settings.cache_mode is CacheMode.REPLAY:
        return True
    verdict = services.keys.known(call)
    if verdict is None:
        verdict = request.get(KEY_VERDICT)  # a check this request made, even one with no answer
    if verdict is None:
        verdict = request[KEY_VERDICT] = await services.keys.accepted(call, request.headers)
    return verdict


async def fill(services: Services, request: web.Request, call: Call) -> web.StreamResponse:
    """Look up; on a miss, lead the upstream call for this key, or wait for its leader and look
    again. A leader's lookup takes the store lock in the same round trip."""
    coalescer = services.coalescer
    looked = not coalescer.shared
    if looked:  # no store lock to take with the lookup: a HIT claims nothing
        entry = await lookup(services, call)
        if entry is not None:
            return await serve_if_trusted(services, request, call, entry)
    lease = coalescer.claim(call.key)
    if lease is None:  # another request of this process leads
        entry = await lookup(services, call)
        if entry is None:
            await coalescer.wait(call.key)
            return await after_leader(services, request, call)
        return await serve_if_trusted(services, request, call, entry)
    try:
        # Claimed right after a lookup in this process's own store, which does not wait: a
        # second lookup would find what the first did.
        entry = None if looked else await lookup_or_lock(services, call, lease)
        if entry is None and await coalescer.lock(lease):
            return await go_upstream(services, request, call, lease)
    finally:
        await coalescer.release(lease)
    if entry is not None:
        return await serve_if_trusted(services, request, call, entry)
    return await after_leader(services, request, call)  # another replica led


async def after_leader(services: Services, request: web.Request, call: Call) -> web.StreamResponse:
    """Look again once the leader is done; if it failed or is late, answer from the upstream
    but leave storing to it."""
    entry = await lookup(services, call)
    if entry is not None:
        return await serve_if_trusted(services, request, call, entry)
    return await go_upstream(services, request, call._replace(plan=replace(call.plan, store=False)))


async def go_upstream(
    services: Services, request: web.Request, call: Call, lease: Lease | None = None
) -> web.StreamResponse:
    """Ask the upstream; when it fails, a stored answer within stale-if-error stands in.
    A leader's `lease` lets the write release the fill lock (streams never lead)."""
    if not call.plan.upstream:
        count_miss(services, call, served=False)
        raise cache_miss(services, call)
    try:
        if call.stream:
            response = await forward_stream(services, request, call)
        elif call.shape == AUDIO:
            response = await forward_sound(services, request, call)
        else:
            response = await forward(services, request, call, lease)
    except UpstreamError:
        stale = await trusted_stale(services, request, call)
        if stale is None:
            count_miss(services, call, served=False)
            raise
        return serve_hit(services, call, stale, Outcome.STALE)
    if response.status in STALE_STATUSES and not response.prepared:
        stale = await trusted_stale(services, request, call)
        if stale is not None:
            return serve_hit(services, call, stale, Outcome.STALE)
    served = is_served(response)
    count_miss(services, call, served)
    if served and not call.stream and "X-Repro-Fingerprint" in response.headers:
        services.keys.remember(call)  # an answer, not an error dressed as a 200
    # A stream's headers go before its end is known: the relay vouches once it ended clean.
    return response


def cache_miss(services: Services, call: Call) -> CacheMissError:
    """The error of a request that found nothing and may not ask the upstream, logged at info
    (route, model and key, never the prompt) so a replaying CI run shows what it lacked."""
    mode = services.settings.cache_mode.value
    model = shown(call.model)
    log.info(
        "cache miss: not allowed to call the upstream",
        extra={"route": call.route, "model": model, "key": call.key, "cache_mode": mode},
    )
    if services.watch is not None:
        services.watch.missed(call)
    asked = f"POST {call.route} (model {model or 'none'!r}, key {call.key})"
    if call.plan.lookup:
        found = f"No stored answer for {asked}"
    else:  # only-if-cached with no-cache or no-store, cache mode off, a response never cached
        why = "cache mode off" if mode == "off" else "no-cache, no-store, or a request never cached"
        found = f"{asked} may not be answered from the cache ({why})"
    barred = "cache mode replay" if mode == "replay" else "Cache-Control: only-if-cached"
    return CacheMissError(
        f"{found}, and this request may not reach the upstream ({barred}).",
        headers=repro_headers(call, call.plan.outcome, None),
    )


MAX_SHOWN = 128


def shown(model: str) -> str:
    """A client's model name as logs and messages show it: bounded, as the client chose it."""
    return model if len(model) <= MAX_SHOWN else model[:MAX_SHOWN] + "…"


async def trusted_stale(services: Services, request: web.Request, call: Call) -> Entry | None:
    """A stored answer to stand in for a failed upstream, only for credentials that may read
    the cache: a STALE answer passes the same key check as a HIT, and is held as one."""
    stale = await stale_entry(services, call)
    if stale is None or not await key_accepted(services, request, call):
        return None
    await hold(services, call)
    return stale


def count_miss(services: Services, call: Call, served: bool) -> None:
    if call.plan.lookup:
        services.metrics.of(call.counted, served).misses.inc()


async def passthrough(
    request: web.Request,
    answering: Callable[[int], Awaitable[None]] | None = None,
    *,
    replayed: bool = False,
) -> web.StreamResponse:
    """Any other /v1 route, streamed both ways and never cached; refused in replay mode, but
    for a `GET` a cassette may hold (`reads`).
    `answering` is told the upstream's status before the client hears a byte of it;
    `replayed`: replay mode answers this request from the cache (a fetch or a deletion by id),
    else a test session's watch is told that no cassette holds it."""
    services = request.app[SERVICES]
    check_one_credential(request, services)
    # A path that reads as one of our routes is the client's mistake to name first: in replay
    # mode, or with only-if-cached, the fix is that route, not a recording.
    target = forward_target(request.raw_path)
    await own_route.refuse_alias(request, target)
    directives = parse_cache_control(tuple(request.headers.getall("Cache-Control", ())))
    read = not replayed and reads.asks_read(request) and not websocket.asked(request)
    read = read and not directives.no_store  # neither looked up nor kept, as a cached route's
    if read and services.settings.cache_mode is CacheMode.REPLAY:
        return await reads.replayed(services, request, target)
    if services.watch is not None and not replayed and not read:
        services.watch.unreplayable(f"{request.method} {request.path[:MAX_SHOWN_PATH]}")
    if services.settings.cache_mode is CacheMode.REPLAY:
        raise ReplayPassthrough(
            f"{request.method} {request.path} is not answered from the cache, and in replay mode "
            "(--cache-mode replay) the proxy never calls the upstream.",
            headers={"X-Repro-Cache": Outcome.BYPASS.value},
        )
    if directives.only_if_cached:  # a recording process serves no read from its store
        raise CacheMissError(
            f"{request.method} {request.path} is not answered from the cache, and "
            "Cache-Control: only-if-cached forbids calling the upstream.",
            headers={"X-Repro-Cache": Outcome.BYPASS.value},
        )
    if read and reads.records(services):
        return await reads.recorded(services, request, target)
    if websocket.asked(request):
        return await websocket.relay(request, services, target)
    # An inflated body goes upstream chunked, without the client's Content-Encoding and
    # length; any other exactly as sent, never a mix of inflated bytes and compressed framing.
    inflated = bodies.inflates(request)
    headers = request_headers(request.headers, _INFLATED_SKIP if inflated else REQUEST_SKIP)
    data = None
    if request.body_exists:
        settings = services.settings
        chunks = bodies.stream(request, settings.max_body, settings.body_timeout)
        data = StreamedBody(chunks, None if inflated else request.content_length)
    upstream = await services.upstream.send(request.method, target, headers, data, decode=False)
    try:
        response = Unframed(status=upstream.status, reason=upstream.reason)
        response.headers.update(response_headers(upstream.headers, decoded=False))
        response.headers["X-Repro-Cache"] = "BYPASS"
        if answering is not None:
            await answering(upstream.status)
        await response.prepare(request)
        async for chunk in upstream.chunks():
            await response.write(chunk)
    except CLIENT_GONE:  # the rest is nobody's: released unread, its connection closed
        log.info("client left a pass-through answer", extra={"status": upstream.status})
        return response
    finally:
        upstream.release()
    await response.write_eof()
    return response


_INFLATED_SKIP = REQUEST_SKIP | {"content-encoding"}


def check_one_credential(request: web.Request, services: Services) -> None:
    """Refuse a credential header or query parameter given twice with different values, as the
    cacheable routes do (400 `invalid_header`, see `credentials.refuse_disagreeing`): forwarded
    as sent, a gateway in front of the proxy could authorize and bill the request by one value
    while the upstream acts on it as the other, and the proxy's own readings of a pass-through
    (a deleted response forgotten in the caller's partition, a stored one fetched in replay
    mode) would pick a partition by both. Lines that agree pass, forwarded as sent."""
    of_request(request.headers, raw_query(request.raw_path), services.credential_names)


def only_if_cached(request: web.Request) -> bool:
    """Whether the client asked for a stored answer or a 504, never the upstream's (RFC 9111)."""
    cache_control = tuple(request.headers.getall("Cache-Control", ()))
    return parse_cache_control(cache_control).only_if_cached


STOPPING = "shutting down"
"""/readyz's reason while the process drains its requests before it exits."""


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"}, dumps=_dumps)


async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    if services.lifecycle.stopping:
        return web.json_response(
            {"status": "unavailable", "reason": STOPPING}, status=503, dumps=_dumps
        )
    store = services.store
    try:
        await store.ping()
    except StoreError as exc:
        reason = str(exc) or type(exc).__name__
        return web.json_response(
            {"status": "unavailable", "reason": reason}, status=503, dumps=_dumps
        )
    return web.json_response({"status": "ok"}, dumps=_dumps)


async def metrics(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    services.metrics.compression.set(services.codec.ratio())
    response = web.Response(body=services.metrics.exposition())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
