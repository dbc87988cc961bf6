"""Recorded reads: the `GET`s of a pass-through route that a cassette holds, for replay.

A test that lists the models, or fetches a file's or a batch's metadata, before or after
its LLM calls failed replaying: the proxy never calls the upstream in replay mode, and these
routes pass through. A process that records (`record` mode, or writing a cassette) therefore
keeps the upstream's JSON answer to each such `GET` it relays, and replay mode answers the
same `GET` with it. Outside replay they still pass through, fresh, as HTTP would have a read
of a live object be.

A read is keyed as an answer is (`canonical.request_key`): its route is the method and the
path as the upstream receives it (`GET /v1/models`), its body empty, its query without
credentials; so the tenant, namespace and keyed headers partition it as they do every answer,
and a cassette line holds it as any other (its model "", its fingerprint `none`).
"""

from __future__ import annotations

import orjson

from proxy.core import canonical
from proxy.core.entry import json_object

PREFIX = "GET "
FINGERPRINT = "none"  # an object read names no model, nor the weights that made it
NO_BODY: dict[str, object] = {}
_JSON = "application/json"


def route_of(path: str) -> str:
    """The route a read of `path` (a forwarded target's path, no query) is keyed and kept under."""
    return PREFIX + path


def is_read(route: str) -> bool:
    """Whether a stored entry is a recorded read, not an answer to a cached route."""
    return route.startswith(PREFIX)


def key_of(path: str, scope: str, namespace: str, query: str, vary: str) -> str:
    return canonical.request_key(route_of(path), scope, namespace, NO_BODY, query, vary)


def is_json(content_type: str) -> bool:
    """`application/json`, with parameters or none: what the API answers its reads with."""
    return content_type.partition(";")[0].strip().lower() == _JSON


def keepable(status: int, content_type: str) -> bool:
    """Whether an answer's head lets it be kept: a 200 in JSON. An error is the upstream's
    news of the moment (a 404 of an object not made yet, a 429), never replayed; a file's
    bytes (`/v1/files/{id}/content`) are the file's, not a read's."""
    return status == 200 and is_json(content_type)


def is_object(body: bytes) -> bool:
    """Whether a whole body is what a read answers: one JSON object."""
    return json_object(body) is not None


def said(body: bytes) -> str:
    """What a kept read says, comparable across recordings: the whole object, keys sorted
    (an object read has no volatile part an answer's id or timestamp is: a new `created` of
    a model is news); bytes that are no object, as they are."""
    found = json_object(body)
    if found is None:
        return body.decode(errors="replace")
    try:
        return orjson.dumps(found, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:  # nested past what orjson writes
        return body.decode(errors="replace")
