"""The life of one cacheable request: decide, look up, serve a HIT or forward a miss.

`prepare` is pure: everything about the request is decided before any I/O. The rest is a thin
driver around the store and the upstream that fails open (`failopen`); what a miss's answer
leaves in the store is `recording`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from proxy.core import canonical, policy, routes
from proxy.core.call import Answer, Asked, Call, Facts, facts_of, prepare_with, repro_headers
from proxy.core.codec import Codec, UnknownDictionary
from proxy.core.entry import (
    AUDIO,
    CorruptEntry,
    Entry,
    Misshapen,
    expires_at,
    is_served_as,
    request_id_of,
)
from proxy.core.fingerprints import ModelFingerprints
from proxy.core.keyed import KEYED_OTHERWISE, REROUTING
from proxy.core.policy import Outcome
from proxy.core.routes import CHAT, RESPONSES
from proxy.errors import TooManyBodies, UpstreamError
from proxy.server.coalesce import Lease
from proxy.server.context import Decoded, EntryMemo, Services
from proxy.server.failopen import store_failed, unreadable
from proxy.server.offload import Busy
from proxy.server.paced import whole
from proxy.server.recording import record
from proxy.store.base import StoreError
from proxy.upstream.client import ANSWER_CODINGS, UpstreamResponse
from proxy.upstream.headers import (
    INERT,
    REQUEST_SKIP,
    Headers,
    request_headers,
    response_headers,
    unstorable,
)

log = logging.getLogger("proxy.cache")


def remembered(services: Services, asked: Asked) -> Call | None:
    """The call prepared for these exact request facts, if a HIT answered it before (see
    `remember`). `prepare` reads only `asked`, the settings and the HMAC secret, so a
    remembered call is exactly the one it would return."""
    return services.calls.get((asked, services.secret.value))


def remember(services: Services, asked: Asked, call: Call) -> None:
    """Keep a call that was answered from the cache: HITs are the traffic that repeats byte for
    byte, and preparing (parse, canonical form, SHA-256) is the largest cost of a HIT. Misses
    are not kept: most are one-offs (unique prompts), and keeping every one costs a miss
    measurable CPU (bench/bench.py shows it) for calls nobody asks for again."""
    size = CALL_OVERHEAD + asked.size + len(call.body) + len(call.kept or b"")
    services.calls.put((asked, services.secret.value), _compacted(call), size)


def _compacted(call: Call) -> Call:
    """The call with the bodies it holds in objects of their own size (`canonical.compact`),
    one object still where both were one."""
    body = canonical.compact(call.body)
    if call.kept is None or call.kept is call.body:
        return call._replace(body=body, kept=call.kept and body)
    return call._replace(body=body, kept=canonical.compact(call.kept))


CALL_OVERHEAD = 512
"""Bytes charged per remembered call on top of what its request holds and the bodies sent and
kept."""


async def prepare_aside(services: Services, asked: Asked) -> Call:
    """`prepare` in a child process (see proxy/server/offload.py): parsing, canonical form and key
    grow with the body, and on the loop a body of several MiB would stall every request the
    process serves. The tenant's HMAC is taken here: its memo belongs to the loop."""
    tenant = services.secret.tenant(asked.credentials)
    try:
        return await services.offload.run(prepare_with, services.settings, tenant, asked)
    except Busy:
        raise TooManyBodies(
            "The proxy is reading as many large request bodies as it takes at once; retry in "
            "a moment.",
            headers={"Retry-After": "1"},
        ) from None
    except BrokenProcessPool:  # the child died (out of memory, killed): a new one next time
        raise TooManyBodies(
            "The process reading large request bodies stopped while reading this one; retry "
            "in a moment.",
            headers={"Retry-After": "1"},
        ) from None


def prepare(services: Services, asked: Asked) -> Call:
    return prepare_with(services.settings, services.secret.tenant(asked.credentials), asked)


async def lookup(services: Services, call: Call) -> Entry | None:
    """The servable entry for this call, or None; a failing store is a miss."""
    try:
        state, blobs = await services.store.lookup(call.key, call.lineage)
    except StoreError as exc:
        store_failed(services, "get", exc)
        return None
    return _servable(services, call, state, blobs)


async def lookup_or_lock(services: Services, call: Call, lease: Lease) -> Entry | None:
    """`lookup` for a leader, taking the store lock in the same round trip when the key holds
    nothing (`lease.held`). A failing store is a miss, and the leader goes without a lock."""
    if lease.token is None:
        return await lookup(services, call)
    try:
        state, blobs, lease.held = await services.store.lookup_or_lock(
            call.key, call.lineage, lease.token, services.coalescer.timeout
        )
    except StoreError as exc:
        store_failed(services, "get", exc)
        lease.token = None
        return None
    return _servable(services, call, state, blobs)


def _servable(
    services: Services, call: Call, state: ModelFingerprints | None, blobs: dict[str, bytes]
) -> Entry | None:
    accepted = services.fingerprints.acceptable(call.lineage, state)
    return choose(services, call, accepted, {fp: blobs[fp] for fp in _allowed(accepted, blobs)})


def _allowed(accepted: Sequence[str] | None, blobs: dict[str, bytes]) -> list[str]:
    return list(blobs) if accepted is None else [fp for fp in accepted if fp in blobs]


def choose(services: Services, call: Call, accepted: Any, blobs: dict[str, bytes]) -> Entry | None:
    """Prefer the current fingerprint (follow), else the newest entry (pin); skip stale ones."""
    now = services.clock()
    entries = []
    for fingerprint, blob in blobs.items():
        try:
            _, entry, until = decoding(services.codec, services.entries, call, fingerprint, blob)
        except CorruptEntry as exc:
            unservable(services, call, exc)
            continue
        if policy.is_fresh(entry.stored_at, now, services.settings.ttl, call.max_age) and (
            _lives(services, call, until, now)
        ):
            entries.append(entry)
    if len(entries) < 2:  # the common case: one fresh entry, already of an accepted fingerprint
        return entries[0] if entries else None
    if accepted is None:
        return max(entries, key=lambda e: e.stored_at)
    rank = {fp: i for i, fp in enumerate(accepted)}
    return min(entries, key=lambda e: rank.get(e.fingerprint, len(rank)))


def _lives(services: Services, call: Call, until: float | None, now: float) -> bool:
    """Whether what a chat answer hands out still lives upstream: an audio answer's id, which
    the client names in its next turn, is kept until its `expires_at` (`until`);
    served later, it fails that turn. Past it the answer is no longer fresh, as a response
    past its `Expires` is not, and a readwrite cache asks again. Replay mode serves what was
    recorded (the cassette is the reference, offline), `--fingerprint-policy pin` what was
    stored (a suite that must never change: the pytest plugin's new_episodes), and
    stale-if-error what there is."""
    settings = services.settings
    if (
        call.kind != CHAT
        or settings.cache_mode is not policy.CacheMode.READWRITE
        or settings.fingerprint_policy is policy.FingerprintPolicy.PIN
    ):
        return True
    return until is None or now < until


def decoded(codec: Codec, memo: EntryMemo, call: Call, fingerprint: str, blob: bytes) -> Entry:
    return decoding(codec, memo, call, fingerprint, blob)[1]


def decoding(codec: Codec, memo: EntryMemo, call: Call, fingerprint: str, blob: bytes) -> Decoded:
    """`Codec.unpack`, remembered per stored slot while its blob stays the same: a HIT then
    decompresses once, and later ones skip parsing and copying, and the scan of the answer
    for its `expires_at` (`_lives`), which on a stream's frames cost a HIT more than its
    lookup. Keyed by the slot, not by the
    blob, so that an answer written again (evicted and filled, or refreshed) replaces its old
    decoding instead of leaving it in memory beside the new one. A blob that is no entry, or
    an entry `call` cannot be answered with (`Misshapen`, checked here once per decoding: the
    key names the route and what its answer must hold), is remembered too (`memo.unreadable`,
    asked only when the memo has no entry, so a HIT pays nothing for it): a value of a few KiB
    may claim tens of MiB, and decompressing it on each request held the loop."""
    slot = (call.key, fingerprint)
    held = memo.get(slot)
    if held is not None and held[0] == blob:  # bytes compare by identity first
        return held
    found = memo.unreadable.get(slot)
    if found is not None and found == _digest(blob):
        raise CorruptEntry("stored value found unreadable before")
    try:
        entry = codec.unpack(blob)
        if not is_served_as(entry, call.kind == RESPONSES, call.shape, call.stream):
            raise Misshapen("stored answer is not its route's shape")
    except UnknownDictionary:  # not remembered: the dictionary may come
        raise
    except CorruptEntry:
        memo.unreadable.put(slot, _digest(blob), UNREADABLE_CHARGE + len(call.key))
        raise
    held = (blob, entry, expires_at(entry.body))
    memo.put(slot, held, len(blob) + len(entry.body) + len(entry.request))
    return held


def _digest(blob: bytes) -> tuple[int, int]:
    """What an unreadable blob is remembered by: its size and hash, not its bytes, so that one
    of many MiB (an older proxy's misshapen answer) is neither held nor decoded again. The hash
    is salted per process (PYTHONHASHSEED) and kept by the bytes object, which the memory
    store and the near-cache hand out again."""
    return len(blob), hash(blob)


UNREADABLE_CHARGE = 128
"""Bytes charged per unreadable slot remembered, on top of its key."""


def unservable(services: Services, call: Call, exc: CorruptEntry) -> None:
    """A stored value `call` cannot be answered with reads as absent, counted as unreadable; a
    misshapen answer is also logged, once per key, so that whoever wrote it can be found."""
    if isinstance(exc, UnknownDictionary):
        services.dictionaries.unknown()
    elif isinstance(exc, Misshapen) and services.entries.first_drop(call.key):
        dropped(services, call.key, call.route, call.model)
    unreadable(services)


def dropped(services: Services, key: str, route: str, model: str) -> None:
    """Log a stored answer no client of its route can read, at warning: the store is shared
    with an older proxy, or written to by others. Route, model and key only."""
    mode = services.settings.cache_mode
    then = (
        "in replay mode a cache miss: record it again"
        if mode is policy.CacheMode.REPLAY
        else "read as a miss"
    )
    log.warning(
        "stored answer dropped: not what clients of its route read (a choice without its "
        "message or text, an item without its vector, no answer), as an older proxy or "
        f"another writer stored it; {then}",
        extra={"route": route, "model": model, "key": key, "cache_mode": mode.value},
    )


async def stale_entry(services: Services, call: Call) -> Entry | None:
    """The newest stored answer of any fingerprint within the stale-if-error window, and
    within `--ttl` (how long an answer may be served at all), which a store may outlive."""
    if call.stale_if_error <= 0:
        return None
    try:
        blobs = await services.store.get(call.key, None)
    except StoreError as exc:
        store_failed(services, "get", exc)
        return None
    now = services.clock()
    entries = []
    for fingerprint, blob in blobs.items():
        try:
            entries.append(decoded(services.codec, services.entries, call, fingerprint, blob))
        except CorruptEntry as exc:
            unservable(services, call, exc)
    ttl = services.settings.ttl
    usable = [
        e
        for e in entries
        if now - e.stored_at <= call.stale_if_error and policy.is_fresh(e.stored_at, now, ttl, None)
    ]
    return max(usable, key=lambda e: e.stored_at, default=None)


def serve_hit(
    services: Services, call: Call, entry: Entry, outcome: Outcome = Outcome.HIT
) -> web.StreamResponse:
    counters = services.metrics.of(call.counted)
    if outcome is Outcome.HIT:
        counters.hits.inc()
    counters.prompt_saved.inc(entry.prompt_tokens)
    counters.completion_saved.inc(entry.completion_tokens)
    headers = repro_headers(call, outcome, entry.fingerprint)
    headers["Age"] = str(max(0, int(services.clock() - entry.stored_at)))
    if entry.content_type:  # else aiohttp's, as the answer that was stored had
        headers["Content-Type"] = entry.content_type
    if entry.request_id:
        headers["x-request-id"] = entry.request_id
    headers.update(INERT)
    return whole(entry.body, headers)


UPSTREAM_SKIP = REQUEST_SKIP | REROUTING | KEYED_OTHERWISE
"""What a request whose answer is kept never forwards as the client sent it (see
`proxy.core.keyed`): a header the key leaves out must not change the answer kept under it."""


def upstream_headers(request: web.Request, call: Call) -> CIMultiDict[str]:
    """The client's headers for the upstream; the body is ours now: plain JSON (or a form
    as the proxy wrote it), whatever encoding the client sent it in."""
    headers = request_headers(request.headers, UPSTREAM_SKIP)
    headers["Content-Type"] = call.content_type
    headers["Accept-Encoding"] = ANSWER_CODINGS
    return headers


async def call_upstream(
    services: Services, request: web.Request, call: Call, relayed: bool = False
) -> UpstreamResponse:
    """The upstream's answer to `call` (the caller releases it), timed to its headers in the
    upstream histogram; one `relayed` as it comes (a stream's, speech) is bounded by its
    silences, not one deadline for all of it. No answer at all (unreachable, timed out)
    counts as the status the client gets instead, 502 or 504, as nginx's $upstream_status
    does: a dead upstream must show in the error ratio."""
    started = services.clock()
    try:
        upstream = await services.upstream.send(
            "POST",
            call.target,
            upstream_headers(request, call),
            call.body,
            whole=not (call.stream or relayed),
        )
    except UpstreamError as exc:
        observe_upstream(services, call.route, exc.status, started)
        raise
    observe_upstream(services, call.route, upstream.status, started)
    return upstream


async def forward(
    services: Services, request: web.Request, call: Call, lease: Lease | None = None
) -> web.StreamResponse:
    upstream = await call_upstream(services, request, call)
    try:
        data = await upstream.read(services.settings.max_entry)
    finally:
        upstream.release()
    call = as_upstream_allows(services, call, upstream.headers)
    headers = response_headers(upstream.headers, decoded=True)
    status, content_type = upstream.status, upstream.headers.get("Content-Type", "")
    fingerprint = None
    facts = None
    if status == 200:
        facts = await read_facts(services, data, call.kind == RESPONSES, call.shape, content_type)
    if facts is not None:
        fingerprint, prompt, completion, found_by, programmed = facts
        answer = Answer(
            data,
            content_type,
            fingerprint,
            prompt,
            completion,
            False,
            found_by,
            programmed,
            request_id_of(upstream.headers),
        )
        await record(services, call, answer, lease)
    headers.update(repro_headers(call, call.plan.outcome, fingerprint))
    return whole(data, headers, status)


async def unrelayed(
    services: Services, call: Call, upstream: UpstreamResponse
) -> web.StreamResponse:
    """An answer to a request relayed as it comes that is not what it asked for (an error, a
    JSON body where a stream or sound was due): read whole, passed on, never stored."""
    data = await upstream.read(services.settings.max_entry)
    headers = response_headers(upstream.headers, decoded=True)
    headers.update(repro_headers(call, call.plan.outcome, None))
    return whole(data, headers, upstream.status)


async def read_facts(
    services: Services, data: bytes, is_response: bool, shape: str | None, content_type: str
) -> Facts | None:
    """`facts_of`, in the offload child for a `heavy` answer (proxy.core.weight): parsing tens
    of MiB of an upstream's JSON, or one MiB nested deep, on the loop would stall every request
    the process serves. A child that died (out of memory) leaves the answer unread: served,
    not stored. Speech is read by its label alone, on the loop: its MiB of sound need no
    parse, nor a copy to the child."""
    if shape == AUDIO:
        return facts_of(data, is_response, shape, content_type)
    try:
        return await services.offload.parse(facts_of, data, is_response, shape, content_type)
    except BrokenProcessPool:
        log.warning("answer not stored: the process reading it died", extra={"bytes": len(data)})
        return None
    except Busy:
        log.info("answer not stored: too many large bodies to read", extra={"bytes": len(data)})
        return None


def as_upstream_allows(services: Services, call: Call, headers: Headers) -> Call:
    """`call`, not stored when the upstream's answer says it must not be (see
    `policy.refused_by_upstream`), or cannot be stored as the bytes it is (`unstorable`).
    What the key covers is `services.keying`'s to say: the keyed headers, and the credential
    headers where they partition the cache (`--cache-scope key`)."""
    if not call.plan.store:
        return call
    reason = policy.refused_by_upstream(
        headers.getall("Cache-Control", ()), headers.getall("Vary", ()), services.keying
    ) or unstorable(headers)
    if reason is None:
        return call
    log.info("answer not stored: the upstream forbids it", extra={"key": call.key, "by": reason})
    return call._replace(plan=replace(call.plan, store=False))


def observe_upstream(services: Services, route: str, status: int, started: float) -> None:
    took = max(0.0, services.clock() - started)
    services.metrics.upstream_answered(routes.pattern(route), status, took)
