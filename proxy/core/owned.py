"""Requests whose answer is their tenant's own (pure).

`shared` scope serves one tenant's stored answer to every key the upstream accepts, on the
premise that the answer follows from the request alone. These kinds of request break it, and
are keyed in their tenant's own partition instead (`call.prepare_with`): each account still
caches its own, and another tenant sending the same body asks the upstream, which decides.
- One naming an uploaded file, a vector store, a container, a skill, a Secure MCP Tunnel, a
  custom voice, a previous audio answer, a stored prompt or a fine-tuned model by its id
  (`names_owned_objects`): its answer is made of the owner's data, which the body only points
  to, and the upstream would refuse the id to any other account.
- One passing back an input item whose content the upstream reads from the owner's stored
  state by its id, or decrypts for the owner's account (`passes_stored_items`), as it reads a
  file. Of the Responses input items (the SDK's `ResponseInputItemParam`):
  - the body carries the content (SELF_CONTAINED): messages, function, custom, computer,
    shell, local shell and apply-patch calls and their outputs, `mcp_list_tools`,
    `mcp_approval_request`, `mcp_call`, tool search calls and outputs, `additional_tools`,
    `configuration_update`, `compaction_trigger`, `program_output`; an
    `image_generation_call` holding its `result`; an `mcp_approval_response` whose request
    is in the same input, or in the response a `previous_response_id` continues (whose own
    rules, proxy/server/chains.py, decide who may continue it);
  - read by id, or sealed: `reasoning` (its text is not in its summary; `encrypted_content`),
    `compaction` (`encrypted_content`), `web_search_call` and `file_search_call` (the pages
    and passages found are not in the item, or come from the owner's vector stores),
    `code_interpreter_call` (the owner's container), `program` (an opaque `fingerprint`
    made for the account), an `image_generation_call` without its `result`, an
    `mcp_approval_response` answering a request it does not hold, and any type this list
    does not know (a new one may be either: sharing is what must be earned);
  - an `item_reference`, holding nothing but the id, is not cached at all (`uncached._references`).
- One carrying credentials for a third party (`carries_credentials`): an MCP tool's headers or
  OAuth token, a connector's, a hosted container's domain secrets (its network policy's), among
  the body's tools or an input item's (CREDENTIALS). Its answer is what they fetched (a mailbox,
  a private server, what the container read with the secret), and the proxy cannot tell
  whether they are still good: a token that leaked and was revoked would go on reading its
  owner's mail from a shared partition. Asked upstream, the third party checks it again. Nor
  are those credentials kept, nor a server URL's path (where some servers take a key): the key
  and the stored request name each by its SHA-256 (`sealed`), so no store, export or cassette
  holds them.
- One naming an access program other than `standard` (`names_program`): the answer is made
  under an entitlement its organization holds (a Daybreak cyber program), which another
  would be refused with a 403. An answer the upstream made under one without being asked
  (`entitled`: it resolves an omitted program from the organization's authorization) is not
  stored in the shared partition at all (`recording.record`): its key, made before the answer
  came, is the shared one every tenant looks up, and a second partition looked up on every
  shared request would cost each one more lookup. Naming the program keeps its caching.
"""

from __future__ import annotations

from typing import Any

from proxy.core.sealing import carries_credentials

OWNED_IDS = frozenset(
    {"file_id", "file_ids", "vector_store_ids", "container_id", "skill_id", "tunnel_id"}
)
"""Fields holding ids of an account's objects, wherever they appear: chat content parts
(`file.file_id`), Responses inputs (`input_file`, `input_image`, a `code_interpreter_call`'s
`container_id`, a container file citation), tools (`file_search.vector_store_ids`, a code
interpreter's `container.file_ids`, a shell's `container_reference`, a `skill_reference`, an
MCP tool's `tunnel_id`, which reaches the owner's private server)."""

BY_ID = frozenset({"audio", "voice"})
"""Fields naming an account's object as `{"id": ...}`: a chat assistant message's `audio` (a
previous audio answer, read from the owner's stored state), a custom `voice` (made from the
owner's samples)."""

_MARKS = (
    b"file_id",
    b"vector_store_ids",
    b"container",
    b"skill_id",
    b"tunnel_id",
    b'"audio"',
    b'"voice"',
    b'"prompt"',
    b"\\u",
)
"""Bytes one of which any such body holds: nearly every body is cleared by a search in C,
without a walk. A field name may be spelled with JSON escapes (`file\\u005fid`), which only
the walk reads as the name it is."""


def names_owned_objects(raw: bytes, body: dict[str, Any]) -> bool:
    """Whether the request (`raw`, parsed as `body`) names an object by an id its account owns:
    a field of OWNED_IDS holding ids anywhere, a `container` given as an id, one of BY_ID
    given as an object holding an id, a stored
    `prompt`, or a fine-tuned `model` (`ft:`, or a legacy `:ft-`: the upstream serves it only
    to the organization that trained it). A field of that name holding no id (a JSON schema's
    property `file_id`, an object) names nothing."""
    model = body.get("model")
    if isinstance(model, str) and (model.startswith("ft:") or ":ft-" in model):
        return True
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
                if name in BY_ID and isinstance(item, dict) and isinstance(item.get("id"), str):
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
    return (
        names_owned_objects(raw, body)
        or passes_stored_items(body)
        or carries_credentials(body)
        or names_program(body)
    )


def names_program(body: dict[str, Any]) -> bool:
    """Whether a request names an access program other than `standard` (`access_programs`)."""
    return "access_programs" in body and _beyond_standard(body["access_programs"])


def entitled(answer: dict[str, Any]) -> bool:
    """Whether a response object says it was made under an access program other than
    `standard`: null (an implicit standard fallback) or absent says no."""
    return _beyond_standard(answer.get("access_programs"))


def _beyond_standard(programs: Any) -> bool:
    """Programs naming one that is not `standard`, in any domain (`cyber`, or one the API adds
    later); anything but an object or null (which the upstream refuses) counts as one."""
    if programs is None:
        return False
    if not isinstance(programs, dict):
        return True
    return any(value != "standard" for value in programs.values())


SELF_CONTAINED = frozenset(
    {
        "message",
        "function_call",
        "function_call_output",
        "custom_tool_call",
        "custom_tool_call_output",
        "computer_call",
        "computer_call_output",
        "shell_call",
        "shell_call_output",
        "local_shell_call",
        "local_shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_call",
        "tool_search_call",
        "tool_search_output",
        "additional_tools",
        "configuration_update",
        "compaction_trigger",
        "program_output",
    }
)
"""Responses input item types that carry in the body all the upstream reads of them."""


def passes_stored_items(body: dict[str, Any]) -> bool:
    """Whether a Responses `input` holds an item the upstream reads from its owner's stored
    state by id, or decrypts for the owner's account (see the module's list). Unlike an
    `item_reference` it is not left uncached (`uncached._references`): every turn of an agent on a
    reasoning model passes its reasoning and tool calls back, and the rest of the conversation
    is in the body, so the owner keeps caching its own turns; only sharing them is wrong, as
    the upstream refuses another account the id."""
    items = body.get("input")
    if not isinstance(items, list):
        return False
    asked = {
        item["id"]
        for item in items
        if isinstance(item, dict)
        and item.get("type") == "mcp_approval_request"
        and isinstance(item.get("id"), str)
    }
    chained = body.get("previous_response_id") is not None
    return any(
        isinstance(item, dict) and not _self_contained(item, asked, chained) for item in items
    )


def _self_contained(item: dict[str, Any], asked: set[str], chained: bool) -> bool:
    """`asked`: the ids of the approval requests the same input holds; `chained`: the request
    continues a stored response, which holds the others. A type or an id that is no string
    (which the upstream refuses) is no known one."""
    kind = item.get("type", "message" if "role" in item else None)
    if not isinstance(kind, str):
        return False
    if kind == "image_generation_call":
        return isinstance(item.get("result"), str)
    if kind == "mcp_approval_response":
        request = item.get("approval_request_id")
        return chained or (isinstance(request, str) and request in asked)
    return kind in SELF_CONTAINED
