"""Requests whose answer is their tenant's own (pure).

`shared` scope serves one tenant's stored answer to every key the upstream accepts, on the
premise that the answer follows from the request alone. Three kinds of request break it, and
are keyed in their tenant's own partition instead (`call.prepare_with`): each account still
caches its own, and another tenant sending the same body asks the upstream, which decides.
- One naming an uploaded file, a vector store, a code-interpreter container or a stored prompt
  by its id (`names_owned_objects`): its answer is made of the owner's data, which the body only
  points to, and the upstream would refuse the id to any other account.
- One passing back a reasoning item (`passes_reasoning`): its content is the owner's stored
  state read by id, or sealed for the owner's account (`encrypted_content`), as a file is.
- One carrying credentials for a third party (`carries_credentials`): an MCP tool's headers or
  OAuth token, a connector's. Its answer is what they fetched (a mailbox, a private server),
  and the proxy cannot tell whether they are still good: a token that leaked and was revoked
  would go on reading its owner's mail from a shared partition. Asked upstream, the third
  party checks it again.
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


def tenants_own(raw: bytes, body: dict[str, Any]) -> bool:
    """Whether the request's answer is its tenant's alone, even in `shared` scope."""
    return names_owned_objects(raw, body) or passes_reasoning(body) or carries_credentials(body)


def passes_reasoning(body: dict[str, Any]) -> bool:
    """Whether a Responses `input` holds a reasoning item by its `id` or `encrypted_content`.
    The upstream reads its reasoning from the response that made it (a summary is no copy of
    it), or decrypts it for the owner's account: like an `item_reference`, the answer rests on
    state the body only points to. Unlike one, it is not left uncached (`call._references`):
    every turn of an agent on a reasoning model passes its reasoning back, and the rest of the
    conversation is in the body, so the owner keeps caching its own turns; only sharing them
    is wrong, as the upstream refuses another account the id."""
    items = body.get("input")
    return isinstance(items, list) and any(
        isinstance(item, dict)
        and item.get("type") == "reasoning"
        and (item.get("id") is not None or item.get("encrypted_content") is not None)
        for item in items
    )


def carries_credentials(body: dict[str, Any]) -> bool:
    """Whether a tool carries credentials for the server it calls: `headers` holding any (the
    proxy cannot tell which header a third party reads a key in), an `authorization` (an OAuth
    token), or a `connector_id`, which always reads its user's account (Gmail, Dropbox) with
    one. A tool with empty or no headers reaches a server that answers anyone sending the same
    body, so names nothing."""
    tools = body.get("tools")
    return isinstance(tools, list) and any(
        isinstance(tool, dict)
        and (
            (isinstance(tool.get("headers"), dict) and bool(tool["headers"]))
            or bool(tool.get("authorization"))
            or tool.get("connector_id") is not None
        )
        for tool in tools
    )
