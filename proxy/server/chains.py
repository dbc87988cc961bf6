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
from proxy.server.context import Services
from proxy.server.failopen import put, store_failed
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
    try:
        pointer = await services.store.get(index, [responses.INDEX_FINGERPRINT])
    except StoreError as exc:
        store_failed(services, "get", exc)
        return False
    target = responses.parse_index(pointer.get(responses.INDEX_FINGERPRINT, b""))
    return target is not None and await holds(services, call.tenant, target[0])


async def _marked(services: Services, key: str, fingerprint: str) -> bool | None:
    """Whether the mark `key` is stored; None when the store fails."""
    try:
        found = await services.store.get(key, [fingerprint])
    except StoreError as exc:
        store_failed(services, "get", exc)
        return None
    return fingerprint in found
