"""What an answer leaves in the store: the entry, its fingerprint, and where to find it again.

An answer is stored only when its plan stores it, it holds no credential of its request and, in
a shared partition, it was made under no access program of the caller's own; it is observed
either way, as its model's fingerprint. A stored Responses answer (or a chat completion the
upstream keeps) is indexed by its id, and in `shared` scope its tenant is marked as its holder.
"""

from __future__ import annotations

import asyncio
import logging

from proxy.core import echoes, policy, responses
from proxy.core.call import Answer, Call
from proxy.core.entry import Entry
from proxy.core.fingerprints import tracked
from proxy.core.routes import RESPONSES
from proxy.server.chains import indexed
from proxy.server.coalesce import Lease
from proxy.server.context import Services
from proxy.server.failopen import put, store_failed
from proxy.store.base import StoreError, Write, labelled

log = logging.getLogger("proxy.cache")


async def observe_fingerprint(services: Services, model: str, fingerprint: str) -> None:
    if not tracked(model):
        return
    services.prober.answered(model)
    try:
        await services.fingerprints.observe(model, fingerprint)
    except StoreError as exc:
        store_failed(services, "fingerprint", exc)


async def record(
    services: Services, call: Call, answer: Answer, lease: Lease | None = None
) -> None:
    """Learn the answer's fingerprint and store the answer (when the plan stores, it holds no
    credential of its request, `echoes`, and, where the partition is shared, it was made under
    no access program the caller's organization holds, `owned.entitled`). A repeat of the
    current fingerprint is counted in process (see FingerprintTracker) and only the answer is
    written; anything else is observed and written in one step (`Store.record`), the
    observation first, so under `follow` the entry is servable once written. A leader's
    `lease` gives up its store lock in the same write. An answer left unstored is still
    observed: it is the model's, and what it says of its fingerprint holds whoever may read
    it."""
    stores = call.plan.store and not (call.shared and answer.entitled)
    entry = _storable(services, call, answer) if stores else None
    if entry is None:
        await observe_fingerprint(services, call.lineage, answer.fingerprint)
        return
    services.prober.answered(call.lineage)
    tracker = services.fingerprints
    counted = tracker.counted(call.lineage, answer.fingerprint)
    try:
        if counted:
            await services.store.put(_write(services, call, entry, lease))
        else:
            await tracker.flush(call.lineage)
            write = _write(services, call, entry, lease, now=tracker.now())
            seen = await services.store.record(write)
            tracker.learned(call.lineage, answer.fingerprint, seen)
    except StoreError as exc:  # both are lost: the observation and the entry
        tracker.lost(call.lineage, counted)
        services.metrics.store_errors.labels("fingerprint").inc()
        store_failed(services, "put", exc)
        return
    services.dictionaries.written()
    if lease is not None:
        lease.held = False  # released with the write
    if answer.response_id is not None:
        await index_response(services, call, answer.response_id, entry.fingerprint)
    elif call.upstream_keeps:
        chat_id = responses.chat_id_of(entry.body, entry.stream)
        if chat_id is not None:
            await index_response(services, call, chat_id, entry.fingerprint, responses.CHAT_INDEX)


def scope_of(services: Services, tenant: str) -> str:
    """The partition a tenant's entries live in under the cache scope."""
    return policy.SHARED if services.settings.cache_scope is policy.CacheScope.SHARED else tenant


async def index_response(
    services: Services,
    call: Call,
    response_id: str,
    fingerprint: str,
    index: str = responses.RESPONSE_INDEX,
) -> None:
    """Remember which entry holds the response `response_id`, for `GET /v1/responses/{id}`
    (or the stored chat completion, for `forget_changed`: `index`), in the caller's partition;
    and, for a deletion by any key the upstream lets delete it, in every one (`everywhere_key`).
    Both are written at once: a Redis store sends them in one round trip. A pointer already
    naming another entry that still holds the id is left as it is: ids are unique, so a second
    answer claiming one is a lie (a backend the caller picked by the body's model, answering
    with the id it was given), and pointed at it, the index would open the owner's chains and
    fetches to the liar's holder marks (`chains.continuable`), and send the owner's fetch to
    the liar's entry."""
    version = responses.api_version(call.keyed_query)
    if version is None or not responses.valid_id(response_id):
        return
    scope = scope_of(services, call.tenant)
    keys = responses.pointer_keys(
        scope, call.namespace, response_id, call.vary, version, call.keyed_query, index
    )
    claimed = await asyncio.gather(*(indexed(services, k, response_id, index) for k in keys))
    free = [
        k for k, found in zip(keys, claimed, strict=True) if found is None or found[0] == call.key
    ]
    value, ttl = responses.index_value(call.key, fingerprint), services.settings.ttl
    labels = labelled(call.namespace, call.model, call.lineage)
    pointer = responses.INDEX_FINGERPRINT
    await asyncio.gather(*(put(services, Write(k, pointer, value, ttl, labels)) for k in free))
    await hold(services, call, fresh=True)


def held_by_id(call: Call) -> bool:
    """Whether what answers `call` is reached by its id later (a response, a chat completion
    the upstream keeps), so a holder mark says who may."""
    return call.kind == RESPONSES or call.upstream_keeps


HELD_FOR = 60.0
"""Seconds a process trusts a holder mark it wrote to be in the store still."""


async def hold(services: Services, call: Call, fresh: bool = False) -> None:
    """In `shared` scope, remember that this tenant was answered with the response (or stored
    chat completion) `call.key` holds (`held_by_id`): it may continue that response, or fetch
    either by id (see proxy/server/chains.py). A HIT rewrites a mark this process wrote within
    HELD_FOR only once that has passed, so that a mark lost since (evicted, purged) costs its
    tenant MISSes for that long at most; a `fresh` answer, just stored, always writes."""
    if services.settings.cache_scope is not policy.CacheScope.SHARED or not held_by_id(call):
        return
    mark, now, ttl = (
        responses.holder_key(call.tenant, call.key),
        services.clock(),
        services.settings.ttl,
    )
    written = services.held.get(mark)
    trusted = min(HELD_FOR, ttl / 2) if ttl else HELD_FOR  # the mark expires with --ttl
    if not fresh and written is not None and 0 <= now - written < trusted:
        return
    write = Write(
        key=mark,
        fingerprint=responses.HOLDER_FINGERPRINT,
        value=responses.MARK,
        ttl=ttl,
        labels=labelled(call.namespace, call.model, call.lineage),
    )
    if await put(services, write):
        services.held.put(mark, now)


def _write(
    services: Services, call: Call, entry: Entry, lease: Lease | None, now: float = 0.0
) -> Write:
    """The answer's write; a leader's lease is released with it."""
    return Write(
        key=call.key,
        fingerprint=entry.fingerprint,
        value=services.codec.pack(entry),
        ttl=services.settings.ttl,
        labels=labelled(call.namespace, call.model, call.lineage),
        unlock=lease.token if lease is not None and lease.held else None,
        model=call.lineage,
        now=now,
    )


def _storable(services: Services, call: Call, answer: Answer) -> Entry | None:
    """The entry to store, or None when it is over the size cap or holds a credential of its
    request (`echoes`; logged)."""
    if _echoes(call, answer):
        return None
    entry = Entry(
        body=answer.body,
        content_type=answer.content_type,
        fingerprint=answer.fingerprint,
        stored_at=services.clock(),
        model=call.model,
        seed=call.seed,
        seed_source=call.seed_source,
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
        stream=answer.stream,
        route=call.route,
        query=call.keyed_query,
        namespace=call.namespace,
        request=call.request,
        vary=call.vary,
        request_id=answer.request_id,
    )
    if len(entry.body) > services.settings.max_entry:
        log.info(
            "answer not stored: over max-entry", extra={"key": call.key, "bytes": len(entry.body)}
        )
        return None
    return entry


def _echoes(call: Call, answer: Answer) -> bool:
    """Whether the answer (its body, or the headers stored and served with it) holds a
    credential its request carried, in a header, the query or (sealed in what is kept) a
    tool: stored, it would be served to every tenant of a shared partition and written into
    cassettes. Logged without it."""
    looked_for = echoes.looked_for(call.credentials, None if call.kept is None else call.body)
    if not echoes.echoed_in_kept(looked_for, answer.body, answer.content_type, answer.request_id):
        return False
    log.warning(
        "answer not stored: it holds a credential of the request it answers (the upstream "
        "echoed it); relayed to its caller only",
        extra={"key": call.key, "route": call.route, "model": call.model},
    )
    return True
