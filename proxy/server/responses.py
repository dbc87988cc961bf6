"""`GET /v1/responses/{id}`: a response the proxy holds, served from the cache in replay mode
(or asked `only-if-cached`); `DELETE`, which the proxy follows, as it follows an update or a
deletion of a stored chat completion (`/v1/chat/completions/{id}`).

SDK flows fetch a response by id after creating it; in replay mode the upstream is out of reach,
so the id is looked up in the index the proxy keeps beside each stored response (see
proxy/core/responses.py), under the caller's own scope and namespace. Asked `only-if-cached`
in another mode, the upstream is there to say whether it still accepts the caller's key, and
a stored response is served only as a HIT is: after the same key check. In every other mode the
upstream holds the truth (a background response's progress, a deletion), and the request
passes through.

Replay mode answers a deletion too, of an id the caller holds, and changes nothing: a test that
cleans up what it made replays as it was recorded, in whatever order a suite runs its tests. A
recording process keeps what a deletion drops for the cassette it writes (`store.retired`).
"""

from __future__ import annotations

import orjson
from aiohttp import hdrs, web

from proxy.core import responses
from proxy.core.call import NAMESPACE, checked_namespace, control, of_entry
from proxy.core.codec import UnknownDictionary
from proxy.core.credentials import Credentials, split_query
from proxy.core.entry import CorruptEntry, Entry, is_served_as
from proxy.core.paths import raw_query
from proxy.core.policy import CacheMode, Outcome
from proxy.server.caching import dropped
from proxy.server.caller import Caller, absent, caller_of, served_headers, vary_for
from proxy.server.chains import holds, indexed, mark_deleted, pointed, was_deleted
from proxy.server.context import SERVICES, Services
from proxy.server.failopen import store_failed, unreadable
from proxy.server.handlers import key_accepted, known, only_if_cached, passthrough
from proxy.server.paced import whole
from proxy.server.recording import scope_of
from proxy.store.base import StoreError
from proxy.upstream.headers import INERT


async def by_id(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    replays = await _replays(services, request, responses.RESPONSE_INDEX)
    if not replays and not only_if_cached(request):
        return await passthrough(request, replayed=True)
    response_id = request.match_info["id"]
    query, in_query = split_query(raw_query(request.raw_path))
    fetch = responses.fetch_of(query)
    found = None
    if fetch is not None:
        caller = await caller_of(services, request)
        found = await _held(services, caller, response_id, fetch.version, in_query, fetch.routing)
        if found is not None and not await _trusted(services, request, caller, *found):
            found = None
    body = None if found is None or fetch is None else _body(found[1], fetch.streamed)
    if found is None or body is None or fetch is None:
        raise absent(
            services,
            request,
            f"No stored response with id {response_id[:128]} for this caller and namespace "
            "answers this query, and in replay mode the request may not reach the upstream.",
        )
    kind = "text/event-stream" if fetch.streamed else "application/json"
    return whole(body, served_headers(services, *found, kind))


async def chat_by_id(request: web.Request) -> web.StreamResponse:
    """`GET /v1/chat/completions/{id}`: in replay mode, a stored chat completion (`store: true`)
    the caller's partition and namespace hold, as it was created (one created streaming is not
    kept whole: a miss); in any other mode the upstream's, which holds the truth."""
    services = request.app[SERVICES]
    if not await _replays(services, request, responses.CHAT_INDEX):
        return await passthrough(request, replayed=True)
    chat_id = request.match_info["id"]
    query, in_query = split_query(raw_query(request.raw_path))
    version = responses.api_version(query)
    caller = await caller_of(services, request)
    found = None
    if version is not None:
        found = await _held_chat(services, caller, chat_id, version, in_query, query)
    if found is not None and (
        found[1].stream or not await _trusted(services, request, caller, *found)
    ):
        found = None
    if found is None:
        raise absent(
            services,
            request,
            f"No stored chat completion with id {chat_id[:128]} for this caller and namespace, "
            "and in replay mode the request may not reach the upstream.",
        )
    return whole(found[1].body, served_headers(services, *found, "application/json"))


async def delete_by_id(request: web.Request) -> web.StreamResponse:
    """A deletion passes through; once the upstream has deleted the response, the proxy
    forgets it too, before the client hears so: otherwise the request that created it would
    still be answered with an id the upstream no longer knows (a 404 to fetch, an error to
    chain on with `previous_response_id`), where without the proxy it would make a new one; and
    a request continuing it would still be answered, where the upstream refuses it. Forgotten
    in every partition (`responses.everywhere_key`): another key of the organization may have
    made it, whose HIT would otherwise hand out the deleted id."""
    services = request.app[SERVICES]
    # Refused before the upstream deletes anything, not after, when the client would be told
    # a deletion failed that took place (and the proxy would still answer with the response):
    # `forget` reads the namespace and the keyed lines, `passthrough` checks the credentials.
    checked_namespace(control(request.headers, NAMESPACE))
    services.keying.lines(request.headers)
    if await _replays(services, request, responses.RESPONSE_INDEX):
        return await _replayed_deletion(services, request, responses.RESPONSE_INDEX)

    async def forget(status: int) -> None:
        response_id = request.match_info["id"]
        if status // 100 != 2 or not responses.valid_id(response_id):
            return
        query, in_query = split_query(raw_query(request.raw_path))
        version = responses.api_version(query)
        caller = await caller_of(services, request)
        vary = vary_for(services, caller, in_query)
        found = None
        if version is not None:
            found = await _held(services, caller, response_id, version, in_query, query)
        # Every scope and namespace: whoever sent a request continuing it, routed as this one.
        await mark_deleted(services, response_id, vary, query)
        everywhere = responses.everywhere_key(response_id, vary, query)
        elsewhere = await _indexed(services, everywhere, response_id)
        await _dropped(services, {held[0] for held in (found, elsewhere) if held is not None})

    return await passthrough(request, forget, replayed=True)


async def forget_changed(request: web.Request) -> web.StreamResponse:
    """An update (`POST`, new `metadata`) or a deletion of a stored chat completion passes
    through; once the upstream has made it, the proxy forgets the answer that carries the id,
    before the client hears so, as it does for a deleted response: otherwise the request that
    made it would still be answered with an id the upstream no longer knows, or with the
    metadata it no longer holds (a chat completion echoes it). Looked for in the caller's
    partition, and in every other one (`responses.everywhere_key`): another key of the same
    organization may have made it, and the upstream let this one change it. Only the routing
    it was asked through is looked in: no other could hold that answer."""
    services = request.app[SERVICES]
    checked_namespace(control(request.headers, NAMESPACE))  # refused before, as delete_by_id
    services.keying.lines(request.headers)
    deletes = request.method == hdrs.METH_DELETE
    if deletes and await _replays(services, request, responses.CHAT_INDEX):
        return await _replayed_deletion(services, request, responses.CHAT_INDEX)

    async def forget(status: int) -> None:
        chat_id = request.match_info["id"]
        query, in_query = split_query(raw_query(request.raw_path))
        version = responses.api_version(query)
        if status // 100 != 2 or not responses.valid_id(chat_id) or version is None:
            return
        caller = await caller_of(services, request)
        vary, scope = vary_for(services, caller, in_query), scope_of(services, caller.tenant)
        pointers = responses.pointer_keys(
            scope, caller.namespace, chat_id, vary, version, query, responses.CHAT_INDEX
        )
        carrying: set[str] = set()
        try:
            for pointer in pointers:
                target = await pointed(services, pointer)
                if target is not None and await _carries(services, *target, chat_id):
                    carrying.add(target[0])
        except StoreError as exc:
            store_failed(services, "get", exc)
        await _dropped(services, carrying)

    return await passthrough(request, forget, replayed=request.method == hdrs.METH_DELETE)


async def _replays(services: Services, request: web.Request, index: str) -> bool:
    """Whether a request by id is answered as replay mode answers it: in replay mode, and where
    a cassette loaded into a recording process (`--cassette`, the plugin's `new_episodes`)
    holds the object it names, for this caller as a fetch finds it. The upstream no longer has
    such an object (the recording that made it deleted it, or it expired) or never had it for
    this key, so passed through, a test's fetch or cleanup of what the cassette answered would
    fail; and a deletion answered upstream would drop the cassette's answer."""
    if services.settings.cache_mode is CacheMode.REPLAY:
        return True
    if not services.recorded:
        return False
    query, in_query = split_query(raw_query(request.raw_path))
    version, routing = responses.api_version(query), query
    if index == responses.RESPONSE_INDEX and request.method == hdrs.METH_GET:
        fetch = responses.fetch_of(query)
        version, routing = (None, "") if fetch is None else (fetch.version, fetch.routing)
    object_id = request.match_info["id"]
    if version is None or not responses.valid_id(object_id):
        return False
    caller = await caller_of(services, request)
    scope, vary = scope_of(services, caller.tenant), vary_for(services, caller, in_query)
    key = responses.index_key(scope, caller.namespace, object_id, vary, version, routing, index)
    if key not in services.recorded:
        return False
    found = await _held_in(index, services, caller, object_id, version, in_query, routing)
    return found is not None  # held by this caller: else the upstream's to say


DELETED = {
    responses.RESPONSE_INDEX: ("response.deleted", "response"),
    responses.CHAT_INDEX: ("chat.completion.deleted", "chat completion"),
}
"""Per index: the `object` the upstream's answer to a deletion names, and what it deleted."""


async def _replayed_deletion(services: Services, request: web.Request, index: str) -> web.Response:
    """The upstream's answer to deleting an id the caller holds (found as a fetch of it finds
    it), `{"id", "object", "deleted": true}`, from replay mode: the cassette stays as it is, so
    a fetch of the id still finds it, and every test replays alike whatever ran before it. Any
    other id is a cache miss, as its fetch is: who asks learns nothing of other partitions."""
    object_id = request.match_info["id"]
    query, in_query = split_query(raw_query(request.raw_path))
    version = responses.api_version(query)
    caller = await caller_of(services, request)
    found = None
    if version is not None:
        found = await _held_in(index, services, caller, object_id, version, in_query, query)
    if found is not None and not await _trusted(services, request, caller, *found):
        found = None
    named, what = DELETED[index]
    if found is None:
        raise absent(
            services,
            request,
            f"No stored {what} with id {object_id[:128]} for this caller and namespace, and in "
            "replay mode its deletion may not reach the upstream.",
        )
    headers = {
        "X-Repro-Cache": Outcome.HIT.value,
        "X-Repro-Key": found[0],
        "Content-Type": "application/json",
        **INERT,
    }
    body = orjson.dumps({"id": object_id, "object": named, "deleted": True})
    return web.Response(body=body, headers=headers)


async def _held_in(
    index: str,
    services: Services,
    caller: Caller,
    object_id: str,
    version: str,
    in_query: Credentials,
    query: str,
) -> tuple[str, Entry] | None:
    """`_held` or `_held_chat`, as the index that names the object is a response's or a chat
    completion's."""
    if index == responses.RESPONSE_INDEX:
        return await _held(services, caller, object_id, version, in_query, query)
    return await _held_chat(services, caller, object_id, version, in_query, query)


async def _held_chat(
    services: Services,
    caller: Caller,
    chat_id: str,
    version: str,
    in_query: Credentials,
    query: str,
) -> tuple[str, Entry] | None:
    """The key and entry of the stored chat completion `chat_id` in the caller's partition (the
    index `recording.index_response` writes), while it holds that id; in `shared` scope, only
    for a caller that was answered with it, as a response (`_held`)."""
    if not responses.valid_id(chat_id):
        return None
    vary, scope = vary_for(services, caller, in_query), scope_of(services, caller.tenant)
    index = responses.index_key(
        scope, caller.namespace, chat_id, vary, version, query, responses.CHAT_INDEX
    )
    found = await _indexed(services, index, chat_id, responses.CHAT_INDEX)
    if found is None or not await holds(services, caller.tenant, found[0]):
        return None
    return found


async def _dropped(services: Services, keys: set[str]) -> None:
    """Delete the entries `keys`, which hold what the upstream no longer has; a process that
    records a cassette keeps what they held for it (`services.retired`)."""
    for key in sorted(keys):
        try:
            if services.retired is not None:
                services.retired.keep(key, await services.store.get(key, None))
            await services.store.delete(key)
        except StoreError as exc:
            store_failed(services, "delete", exc)


async def _carries(services: Services, key: str, fingerprint: str, chat_id: str) -> bool:
    """Whether entry `key` still holds the chat completion `chat_id`: a refresh may have put
    another answer (another id) there since, which the change leaves as it is."""
    blob = (await services.store.get(key, [fingerprint])).get(fingerprint)
    try:
        entry = None if blob is None else services.codec.unpack(blob)
    except (UnknownDictionary, CorruptEntry):
        return True  # unreadable: nothing to keep
    return entry is not None and responses.chat_id_of(entry.body, entry.stream) == chat_id


async def _held(
    services: Services,
    caller: Caller,
    response_id: str,
    version: str,
    in_query: Credentials,
    query: str = "",
) -> tuple[str, Entry] | None:
    """The key and entry of the response `response_id` in the caller's partition, created with
    the keyed headers, the api-version and the routing `query` (without credentials) this
    request sends (a fetch's, without its own parameters: `fetch_of`); in `shared` scope,
    only for a caller that was answered with it (see proxy/server/chains.py)."""
    vary = vary_for(services, caller, in_query)
    if not responses.valid_id(response_id) or await was_deleted(services, response_id, vary, query):
        return None
    scope = scope_of(services, caller.tenant)
    index = responses.index_key(scope, caller.namespace, response_id, vary, version, query)
    found = await _indexed(services, index, response_id)
    if found is None or not await holds(services, caller.tenant, found[0]):
        return None
    return found


async def _trusted(
    services: Services, request: web.Request, caller: Caller, key: str, entry: Entry
) -> bool:
    """A stored response goes only to credentials the upstream accepts, as a HIT of the
    request that made it does (`key_accepted`; replay mode never asks): otherwise a revoked
    key would go on fetching its own responses by id, and in `shared` scope its holder marks'."""
    call = of_entry(entry, key, caller.tenant, caller.query, caller.lines)
    return known(services, call) or await key_accepted(services, request, call)


async def _indexed(
    services: Services, index: str, object_id: str, kind: str = responses.RESPONSE_INDEX
) -> tuple[str, Entry] | None:
    """`chains.indexed`, and a response stored in a shape no client reads (an older proxy's)
    dropped as unreadable."""
    found = await indexed(services, index, object_id, kind)
    if found is None or kind != responses.RESPONSE_INDEX:
        return found
    if not is_served_as(found[1], True, None, found[1].stream):
        if services.entries.first_drop(found[0]):
            dropped(services, found[0], found[1].route, found[1].model)
        unreadable(services)
        return None
    return found


def _body(entry: Entry, streamed: bool) -> bytes | None:
    """What the fetch answers: the response object, or, asked with `stream=true`, the stored
    events of a response that was created streaming."""
    if streamed:
        return entry.body if entry.stream else None
    return responses.final_response(entry.body) if entry.stream else entry.body
