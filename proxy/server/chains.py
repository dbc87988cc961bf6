"""Who may be answered from the cache a request that continues a stored response
(`previous_response_id`), or a fetch of one by id.

The upstream answers a chain only while the response exists, and only for its owner: the answer
reads the conversation stored under the id. So a chain is answered from the cache only
- while no proxy on the store has seen the upstream delete that response through the same
  routing (`mark_deleted`), and
- in `shared` scope, to a tenant that was answered with that response itself (`recording.hold`),
  so asked the request that made it and knows the conversation the chain continues. An id
  learnt any other way (a log, a guess, another tenant's screen) reads nothing: the request goes
  to the upstream, which refuses a stranger's id.
In `key` scope the key names the tenant already, so only the first rule is needed.

Both marks are entries of the store, as the id index is: the same `--ttl`, memory bound and
eviction as the answers they guard, and shared by every proxy on one Redis. A mark that is
missing (evicted, purged, a failing store) sends the request upstream: never a wrong answer.
"""

from __future__ import annotations

from proxy.core import policy, responses
from proxy.core.call import Call
from proxy.core.entry import Entry
from proxy.server.context import Services
from proxy.server.failopen import put, store_failed, stored_entry
from proxy.store.base import StoreError, Write


async def mark_deleted(services: Services, response_id: str, vary: str, query: str) -> None:
    """Remember that the upstream deleted `response_id`, in every scope and namespace, for
    requests routed as the `DELETE` was (keyed headers' digest `vary`, keyed `query`): such a
    request continuing it, or fetching it, must reach the upstream again."""
    write = Write(
        key=responses.deleted_key(response_id, vary, query),
        fingerprint=responses.DELETED_FINGERPRINT,
        value=responses.MARK,
        ttl=services.settings.ttl,
    )
    await put(services, write)


async def was_deleted(services: Services, response_id: str, vary: str, query: str) -> bool:
    """Whether the upstream deleted `response_id` for requests routed as one with keyed
    headers' digest `vary` and keyed `query`; a failing store says yes, so that the upstream,
    which knows, answers."""
    key = responses.deleted_key(response_id, vary, query)
    fingerprint = responses.DELETED_FINGERPRINT
    return await _marked(services, key, fingerprint) is not False


async def holds(services: Services, tenant: str, key: str) -> bool:
    """Whether `tenant` may be answered with what entry `key` holds: always in `key` scope
    (the key names the tenant), in `shared` scope once it was answered with it."""
    if services.settings.cache_scope is not policy.CacheScope.SHARED:
        return True
    mark = responses.holder_key(tenant, key)
    return await _marked(services, mark, responses.HOLDER_FINGERPRINT) is True


async def continuable(services: Services, call: Call, chained: str) -> bool:
    """Whether the response `chained` that `call` continues may be continued from the cache for
    this caller."""
    if await was_deleted(services, chained, call.vary, call.keyed_query):
        return False
    if services.settings.cache_scope is not policy.CacheScope.SHARED:
        return True
    version = responses.api_version(call.keyed_query)
    if version is None:
        return False
    index = responses.index_key(
        policy.SHARED, call.namespace, chained, call.vary, version, call.keyed_query
    )
    found = await indexed(services, index, chained)
    return found is not None and await holds(services, call.tenant, found[0])


async def pointed(services: Services, pointer: str) -> tuple[str, str] | None:
    """The (key, fingerprint) the index entry `pointer` names, if it is one."""
    found = await services.store.get(pointer, [responses.INDEX_FINGERPRINT])
    return responses.parse_index(found.get(responses.INDEX_FINGERPRINT, b""))


async def indexed(
    services: Services, index: str, object_id: str, kind: str = responses.RESPONSE_INDEX
) -> tuple[str, Entry] | None:
    """The key and entry the index entry `index` points at, while that entry is fresh and
    holds `object_id` (a response, or a stored chat completion: `kind`); None for anything
    else, a failing store included. A refresh, or a purge and the same request again, puts
    another answer (another id) where the index points: a holder of that one was never
    answered with `object_id`, and may neither fetch nor continue it."""
    try:
        target = await pointed(services, index)
    except StoreError as exc:
        store_failed(services, "get", exc)
        return None
    entry = None if target is None else await stored_entry(services, *target)
    if target is None or entry is None:
        return None
    # --ttl bounds every answer served, and a store may hold one past it.
    fresh = policy.is_fresh(entry.stored_at, services.clock(), services.settings.ttl, None)
    held = responses.stored_id if kind == responses.RESPONSE_INDEX else responses.chat_id_of
    return (target[0], entry) if fresh and held(entry.body, entry.stream) == object_id else None


async def _marked(services: Services, key: str, fingerprint: str) -> bool | None:
    """Whether the mark `key` is stored; None when the store fails."""
    try:
        found = await services.store.get(key, [fingerprint])
    except StoreError as exc:
        store_failed(services, "get", exc)
        return None
    return fingerprint in found
