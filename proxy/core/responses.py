"""Responses API answers found again by their id (pure): the index entry and what it serves.

SDK flows fetch a response by id (`GET /v1/responses/{id}`) after creating it. In replay mode
the upstream is out of reach, so the proxy keeps, beside each stored response, a small index
entry from its id to the cache key and fingerprint that hold it. The index key hashes the id
with the tenant scope and the namespace, as the answer's own key does: a tenant that learns
another's response id still finds nothing under its own scope. Two marks, store entries as
the index is, say who may continue a response or fetch it (see proxy/server/chains.py): that
the upstream deleted it, and, in `shared` scope, which tenants were answered with it. A chat
completion made with `store: true` is indexed alike (`CHAT_INDEX`), so that its update or
deletion drops the answer carrying it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlencode

import orjson

from proxy.core import routes
from proxy.core.canonical import KEY_VERSION
from proxy.core.entry import rewritten
from proxy.core.sse import RESPONSE_DONE
from proxy.core.sse_wire import payloads

INDEX_FINGERPRINT = "id-index"
RESPONSE_INDEX = "response"
CHAT_INDEX = "chat"
"""The domains of the id index: a response's (fetched, chained on, deleted) and a stored chat
completion's (updated or deleted: `forget_changed`), so that neither id finds the other's."""
DELETED_FINGERPRINT = "deleted"
HOLDER_FINGERPRINT = "holder"
MARK = b"repro-mark:1"
"""The value of a deletion's or a holder's mark: not an Entry either, so exports and lookups
pass it by."""
_INDEX_PREFIX = b"repro-index:1:"
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_HEX = re.compile(r"[0-9a-f]{64}")


def valid_id(response_id: str) -> bool:
    """A response id the proxy looks up: short, of a plain character set."""
    return _ID.fullmatch(response_id) is not None


def index_key(
    scope: str,
    namespace: str,
    response_id: str,
    vary: str = "",
    version: str = "",
    query: str = "",
    index: str = RESPONSE_INDEX,
) -> str:
    """The key of the index entry for `response_id` (of the domain `index`) in this scope and
    namespace, and with the keyed request headers' digest `vary` (as its entry's key has them,
    "" for none) and the keyed `query`'s parameters but api-version (`routes.routing`): an id is
    whatever the upstream answering says, and an answer routed by a header or a query parameter
    (a tenant's own server behind a gateway) may name another answer's id; it must answer only a
    fetch, or open only a chain, asked through the same route. Likewise an Azure `api-version`
    (`version`, "" for none) names the shape the object is served in: fetched under another,
    it is not the one stored. A domain of its own, so it never equals a request's key."""
    material: dict[str, object] = {
        "id": response_id,
        "index": index,
        "namespace": namespace,
        "scope": scope,
        "v": KEY_VERSION,
    }
    if version:
        material["version"] = version
    return _routed_key(material, vary, query)


def everywhere_key(
    response_id: str, vary: str = "", query: str = "", index: str = RESPONSE_INDEX
) -> str:
    """The key of the pointer to the last entry stored holding `response_id`, whatever its
    scope and namespace: the upstream keeps a response (or a chat completion) for its whole
    organization, and any key of it may delete the object, so a deletion the upstream confirms
    drops the answer carrying it from every partition, not only the deleter's (`index_key`).
    One per routing, as a deletion's mark (`deleted_key`). Read only after the upstream said
    the object is gone, to drop what holds it: never to serve."""
    material: dict[str, object] = {
        "id": response_id,
        "index": "everywhere",
        "of": index,
        "v": KEY_VERSION,
    }
    return _routed_key(material, vary, query)


def pointer_keys(
    scope: str,
    namespace: str,
    object_id: str,
    vary: str,
    version: str,
    query: str,
    index: str = RESPONSE_INDEX,
) -> tuple[str, str]:
    """The keys an answer the upstream keeps by its id is found under: its partition's index
    (`index_key`), and the pointer a deletion by any key follows (`everywhere_key`)."""
    return (
        index_key(scope, namespace, object_id, vary, version, query, index),
        everywhere_key(object_id, vary, query, index),
    )


def deleted_key(response_id: str, vary: str = "", query: str = "") -> str:
    """The key of the mark a deletion leaves for `response_id`: one for every scope and
    namespace, since the upstream deleted the response for everyone it would have answered;
    but one per routing, as the id index (`index_key`): a `DELETE` that keyed headers (`vary`)
    or a keyed `query` send to a tenant's own server, which may accept any id, deleted nothing
    an unrouted request, or one routed elsewhere, would be answered with."""
    material: dict[str, object] = {"id": response_id, "index": "deleted", "v": KEY_VERSION}
    return _routed_key(material, vary, query)


def _routed_key(material: dict[str, object], vary: str, query: str) -> str:
    """SHA-256 of `material` with the routing it was asked through: the keyed headers' digest
    `vary` and the keyed `query`'s parameters but api-version (`routes.routing`)."""
    if vary:
        material["vary"] = vary
    routed = routes.routing(query)
    if routed:
        material["routing"] = [list(pair) for pair in routed]
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()


def holder_key(tenant: str, key: str) -> str:
    """The key of the mark that says the tenant `tenant` was answered with the entry `key`: in
    `shared` scope, whoever asked a response's request may continue it, or fetch it by id."""
    material = {"index": "holder", "key": key, "tenant": tenant, "v": KEY_VERSION}
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()


def chained_on(body: dict[str, Any]) -> str | None:
    """The response a request continues (`previous_response_id`), when it names one the proxy
    could have seen deleted: an id of the plain form."""
    value = body.get("previous_response_id")
    return value if isinstance(value, str) and valid_id(value) else None


def index_value(key: str, fingerprint: str) -> bytes:
    """Not an Entry (its unpacking fails), so exports and lookups pass it by."""
    return _INDEX_PREFIX + orjson.dumps([key, fingerprint])


def parse_index(value: bytes) -> tuple[str, str] | None:
    """The (key, fingerprint) an index entry points at, None for anything else."""
    if not value.startswith(_INDEX_PREFIX):
        return None
    try:
        found = orjson.loads(value[len(_INDEX_PREFIX) :])
    except orjson.JSONDecodeError:
        return None
    if (
        isinstance(found, list)
        and len(found) == 2
        and all(isinstance(part, str) for part in found)
        and _HEX.fullmatch(found[0])
    ):
        return found[0], found[1]
    return None


def id_of(answer: dict[str, Any]) -> str | None:
    """The id of a whole response object, when it is one the proxy can index: not one made with
    `store: false`, which the upstream never kept, so a fetch of its id is a 404 there."""
    value = answer.get("id")
    kept = answer.get("store") is not False
    return value if kept and isinstance(value, str) and valid_id(value) else None


def chat_id_of(body: bytes, stream: bool) -> str | None:
    """The id of the chat completion a stored answer holds: the object's, or a stream's first
    chunk's (every chunk names it)."""
    for payload in payloads(body) if stream else (body,):
        try:
            found = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        value = found.get("id") if isinstance(found, dict) else None
        return value if isinstance(value, str) and valid_id(value) else None
    return None


def api_version(query: str) -> str | None:
    """The `api-version` a query names (any letter case, as Azure reads it), "" for none, and
    None when it names more than one."""
    versions = [
        v for k, v in parse_qsl(query, keep_blank_values=True) if k.lower() == "api-version"
    ]
    if len(versions) > 1:
        return None
    return versions[0] if versions else ""


class Fetch(NamedTuple):
    """What a fetch by id asks for, of what a stored response can answer, and through which
    routing: its keyed query's parameters but `stream` (`routes.routing` drops api-version)."""

    streamed: bool
    version: str
    routing: str = ""


_STREAM = {"true": True, "false": False}
_MORE = frozenset({"include", "include[]", "starting_after", "include_obfuscation"})
"""Parameters of a fetch that ask for what the stored object does not hold: `include` adds
fields to it, `starting_after` skips events, `include_obfuscation` pads the events."""


def fetch_of(query: str) -> Fetch | None:
    """The fetch a query (without its credential parameters) asks for, or None when it asks
    for what the stored object does not hold (`_MORE`, a `stream` or api-version named twice
    or a `stream` of no boolean, a `;`). Any other parameter routes it, as it routes a create (a
    gateway's `?provider=`): it is found only in the id index and deletion marks of that
    routing, so a parameter no create sent finds nothing."""
    streamed: bool | None = None
    version: str | None = None
    routing: list[tuple[str, str]] = []
    if ";" in query:  # servers read it two ways: as a separator, or within a name
        return None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name.lower() == "api-version":
            if version is not None:
                return None
            version = value
        elif name == "stream":
            if streamed is not None or value not in _STREAM:
                return None
            streamed = _STREAM[value]
        elif name in _MORE:
            return None
        else:
            routing.append((name, value))
    return Fetch(streamed is True, version or "", urlencode(routing))


def final_response(sse: bytes) -> bytes | None:
    """The response object a recorded stream completed with: what `GET /v1/responses/{id}`
    answers for a response that was created streaming; None for one nested deeper than JSON
    is written again (`rewritten`), which is then not found by id."""
    last = None
    for payload in payloads(sse):
        if payload.strip() != b"[DONE]":
            last = payload
    if last is None:
        return None
    try:
        event = orjson.loads(last)
    except orjson.JSONDecodeError:
        return None
    if isinstance(event, dict) and event.get("type") == RESPONSE_DONE:
        response = event.get("response")
        return rewritten(response) if isinstance(response, dict) else None
    return None


def stored_id(body: bytes, stream: bool) -> str | None:
    """The id of the response a stored answer holds (whole, or the stream's completed one)."""
    whole = final_response(body) if stream else body
    if whole is None:
        return None
    try:
        answer = orjson.loads(whole)
    except orjson.JSONDecodeError:
        return None
    return id_of(answer) if isinstance(answer, dict) else None
