"""Requests that name objects an upstream account owns (pure).

`shared` scope serves one tenant's stored answer to every key the upstream accepts, on the
premise that the answer follows from the request alone. A request naming an uploaded file, a
vector store, a code-interpreter container or a stored prompt by its id breaks that premise:
its answer is made of the owner's data, which the body only points to, and the upstream would
refuse the id to any other account. Served from a shared partition, that answer would go to
anyone who learnt the id and sent the same body. Such requests are keyed in their tenant's own
partition instead (`call.prepare_with`): each account still caches its own.
"""

from __future__ import annotations

from typing import Any

OWNED_IDS = frozenset({"file_id", "file_ids", "vector_store_ids"})
"""Fields holding ids of an account's uploaded files or vector stores, wherever they appear:
chat content parts (`file.file_id`), Responses inputs (`input_file`, `input_image`), tools
(`file_search.vector_store_ids`, a code interpreter's `container.file_ids`)."""

_MARKS = (b"file_id", b"vector_store_ids", b'"container"', b'"prompt"', b"\\u")
"""Bytes one of which any such body holds: nearly every body is cleared by a search in C,
without a walk. A field name may be spelled with JSON escapes (`file\\u005fid`), which only
the walk reads as the name it is."""


def names_owned_objects(raw: bytes, body: dict[str, Any]) -> bool:
    """Whether the request (`raw`, parsed as `body`) names an object by an id its account owns:
    a field of OWNED_IDS holding ids anywhere, a `container` given as an id, or a stored
    `prompt`. A field of that name holding no id (a JSON schema's property `file_id`, an
    object) names nothing."""
    if not any(mark in raw for mark in _MARKS):
        return False
    prompt = body.get("prompt")
    if isinstance(prompt, dict) and prompt.get("id") is not None:
        return True
    pending: list[Any] = [body]
    while pending:  # bounded: a parsed body nests at most canonical.MAX_DEPTH deep
        value = pending.pop()
        if isinstance(value, dict):
            for name, item in value.items():
                if name in OWNED_IDS and _names_ids(item):
                    return True
                if name == "container" and isinstance(item, str):
                    return True
                if isinstance(item, dict | list):
                    pending.append(item)
        elif isinstance(value, list):
            pending.extend(item for item in value if isinstance(item, dict | list))
    return False


def _names_ids(value: Any) -> bool:
    """An id, or a list holding one."""
    if isinstance(value, str):
        return True
    return isinstance(value, list) and any(isinstance(item, str) for item in value)
