"""Recorded reads (see proxy/core/reads.py): a `GET` of a pass-through route kept while the
proxy records (`record` mode, or a cassette written), and answered from it in replay mode.

Kept, the answer still reaches its client as it comes; the copy is stored once the body ended
cleanly, within `--max-entry`, and only when it is one JSON object holding no credential of the
request (`echoes`), under no `Cache-Control: no-store` or `private` and no `Vary` the key
leaves out. A body cut short reaches the client cut short, its connection closed, and is never
stored. Anything else passes through as every other request does.
"""

from __future__ import annotations

import contextlib
import logging
from typing import NamedTuple

from aiohttp import web

from proxy.core import echoes, policy, reads
from proxy.core.credentials import of_request, split_query
from proxy.core.entry import Entry, request_id_of
from proxy.core.paths import raw_query
from proxy.core.policy import Outcome
from proxy.errors import UpstreamError
from proxy.server.caching import UPSTREAM_SKIP
from proxy.server.caller import MAX_SHOWN_PATH, Caller, absent, caller_of, served_headers, vary_for
from proxy.server.context import Services
from proxy.server.failopen import put, stored_entry
from proxy.server.paced import whole
from proxy.server.recording import scope_of
from proxy.server.streaming import CLIENT_GONE
from proxy.server.unframed import Unframed
from proxy.store.base import Write, labelled
from proxy.upstream.client import UpstreamResponse
from proxy.upstream.headers import request_headers, response_headers, unstorable

log = logging.getLogger("proxy.reads")


def asks_read(request: web.Request) -> bool:
    """A `GET` without a body (nor a WebSocket's handshake, which the caller tells apart)."""
    return request.method == "GET" and not request.body_exists


def records(services: Services) -> bool:
    """Whether this process keeps reads: it records for a replay, in `record` mode, or writing
    a cassette (`--cassette`, the pytest plugin recording: the processes that keep what the
    upstream deletes too, `retired`)."""
    mode = services.settings.cache_mode
    return mode is policy.CacheMode.RECORD or services.retired is not None


async def replayed(services: Services, request: web.Request, target: str) -> web.StreamResponse:
    """The kept answer to this `GET`, as a HIT; a cache miss when none was kept. Looked up in
    the caller's own partition, where a recording process keeps it, then in `shared` scope in
    the shared one, where a cassette loads every answer it holds (`cassette.from_record`)."""
    caller = await caller_of(services, request)
    asked = _asked(services, caller, target, caller.tenant)
    key = asked.key
    entry = await _kept(services, key)
    shared = scope_of(services, caller.tenant)
    if entry is None and shared != caller.tenant:
        key = _asked(services, caller, target, shared).key
        entry = await _kept(services, key)
    if entry is None:
        raise absent(
            services,
            request,
            f"No recorded answer to GET {asked.path[:MAX_SHOWN_PATH]} for this caller and "
            "namespace, and in replay mode the request may not reach the upstream.",
        )
    return whole(entry.body, served_headers(services, key, entry, entry.content_type))


async def recorded(services: Services, request: web.Request, target: str) -> web.StreamResponse:
    """This `GET` relayed from the upstream, its answer kept for replay where it may be."""
    caller = await caller_of(services, request)
    asked = _asked(services, caller, target, caller.tenant)
    key = asked.key
    headers = request_headers(request.headers, UPSTREAM_SKIP)
    upstream = await services.upstream.send("GET", target, headers, None, decode=True)
    try:
        kept = _keeps(services, upstream, key)
        head = response_headers(upstream.headers, decoded=True)
        head["X-Repro-Cache"] = (Outcome.REFRESH if kept else Outcome.BYPASS).value
        if kept:
            head["X-Repro-Key"] = key
        response = Unframed(status=upstream.status, reason=upstream.reason, headers=head)
        await response.prepare(request)
        whole, body = await _relay(services, request, upstream, response, key, kept)
    finally:
        upstream.release()
    if not whole:
        return response
    content_type = upstream.headers.get("Content-Type", "")
    request_id = request_id_of(upstream.headers)
    stored = False
    if body is not None and not _echoes(services, request, body, content_type, request_id):
        entry = Entry(
            body=body,
            content_type=content_type,
            fingerprint=reads.FINGERPRINT,
            stored_at=services.clock(),
            model="",
            route=reads.route_of(asked.path),
            query=asked.query,
            namespace=caller.namespace,
            request=b"{}",
            vary=asked.vary,
            request_id=request_id,
        )
        stored = await put(services, _write(services, key, entry))
    if not stored and services.watch is not None:
        services.watch.unreplayable(f"GET {request.path[:MAX_SHOWN_PATH]}")
    with contextlib.suppress(*CLIENT_GONE):
        await response.write_eof()
    return response


class _Asked(NamedTuple):
    path: str  # as the upstream receives it
    query: str  # without credentials
    vary: str  # the keyed headers' digest
    key: str


def _asked(services: Services, caller: Caller, target: str, scope: str) -> _Asked:
    """What a read asks, as its key and its entry name it, in the partition `scope`."""
    query, in_query = split_query(caller.query)
    path = target.partition("?")[0]
    vary = vary_for(services, caller, in_query)
    return _Asked(path, query, vary, reads.key_of(path, scope, caller.namespace, query, vary))


def _keeps(services: Services, upstream: UpstreamResponse, key: str) -> bool:
    """Whether the answer's head lets it be kept (`reads.keepable`, and as the upstream
    allows: `policy.refused_by_upstream`, `unstorable`)."""
    if not reads.keepable(upstream.status, upstream.headers.get("Content-Type", "")):
        return False
    headers = upstream.headers
    reason = policy.refused_by_upstream(
        headers.getall("Cache-Control", ()), headers.getall("Vary", ()), services.keying
    ) or unstorable(headers)
    if reason is not None:
        log.info("read not kept: the upstream forbids it", extra={"key": key, "by": reason})
        return False
    return True


async def _relay(
    services: Services,
    request: web.Request,
    upstream: UpstreamResponse,
    response: Unframed,
    key: str,
    keeping: bool,
) -> tuple[bool, bytes | None]:
    """Copy the answer to the client. Whether it was copied whole (a broken upstream closes
    the client's connection: it must see it broken, as sent), and the body to keep, if it was
    kept to the end and is one JSON object."""
    kept: list[bytes] | None = [] if keeping else None
    size = 0
    try:
        async for chunk in upstream.chunks():
            size += len(chunk)
            if kept is not None and size > services.settings.max_entry:
                log.info("read not kept: over --max-entry", extra={"key": key})
                kept = None
            if kept is not None:
                kept.append(chunk)
            await response.write(chunk)
    except UpstreamError as exc:
        log.warning("upstream read broke", extra={"key": key, "error": exc.code})
        if request.transport is not None:
            request.transport.close()
        return False, None
    except CLIENT_GONE:
        log.info("client left a read", extra={"key": key})
        return False, None
    body = None if kept is None else b"".join(kept)
    return True, body if body is not None and reads.is_object(body) else None


def _echoes(
    services: Services, request: web.Request, body: bytes, content_type: str, request_id: str
) -> bool:
    """Whether the answer (its body, or the headers kept with it) holds a credential of the
    request: kept, a cassette would carry it (logged without it)."""
    credentials = of_request(
        request.headers, raw_query(request.raw_path), services.credential_names
    )
    looked_for = echoes.looked_for(credentials)
    if not echoes.echoed_in_kept(looked_for, body, content_type, request_id):
        return False
    log.warning("read not kept: it holds a credential of its request (the upstream echoed it)")
    return True


def _write(services: Services, key: str, entry: Entry) -> Write:
    return Write(
        key=key,
        fingerprint=entry.fingerprint,
        value=services.codec.pack(entry),
        ttl=services.settings.ttl,
        labels=labelled(entry.namespace, "", ""),
    )


async def _kept(services: Services, key: str) -> Entry | None:
    """The read kept under `key`, while it is fresh (`--ttl`); None for anything else."""
    entry = await stored_entry(services, key, reads.FINGERPRINT)
    if entry is None:
        return None
    fresh = policy.is_fresh(entry.stored_at, services.clock(), services.settings.ttl, None)
    return entry if fresh and reads.is_read(entry.route) else None
