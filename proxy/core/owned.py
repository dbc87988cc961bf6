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
  - an `item_reference`, holding nothing but the id, is not cached at all (`call._references`).
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
  stored in the shared partition at all (`caching.record`): its key, made before the answer
  came, is the shared one every tenant looks up, and a second partition looked up on every
  shared request would cost each one more lookup. Naming the program keeps its caching.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from proxy.core import canonical

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
    `item_reference` it is not left uncached (`call._references`): every turn of an agent on a
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


CREDENTIALS = frozenset(
    {"headers", "authorization", "server_url", "connector_id", "domain_secrets"}
)
"""Fields holding, or naming, credentials a tool reaches a third party with (the SDK's request
types, surveyed for a field documented as a secret, token, password, key or credential): an MCP
tool's `headers`, `authorization` (an OAuth token), `server_url` (some servers take a key in
the path), `connector_id`; a hosted container's network policy's `domain_secrets` (each
`{domain, name, value}`, its `value` injected into the container's requests to `domain`),
which a code interpreter's `container` or a shell's `environment` gives. Read wherever a tool
holds them, at any depth (`_reaches`): a new place the SDK puts one is covered, and one that
is none (a free-form field the SDK adds) only costs sharing."""

SCHEMAS = frozenset({"parameters", "output_schema"})
"""A function tool's JSON Schemas, the one place a tool holds the client's own field names: a
property `headers` or `authorization` there is no credential."""


def carries_credentials(body: dict[str, Any]) -> bool:
    """Whether a tool carries credentials for the server it calls (CREDENTIALS): `headers`
    holding any (the proxy cannot tell which header a third party reads a key in), an
    `authorization`, a `connector_id`, which always reads its user's account (Gmail, Dropbox)
    with one, or `domain_secrets` holding any. A tool with empty or no headers reaches a server
    that answers anyone sending the same body, so names nothing; nor does a `server_url`
    alone (sealed all the same). Tools are read where a body gives them: its `tools`, and an
    input item's (`additional_tools`, `tool_search_output`)."""
    return any(
        (isinstance(reach.get("headers"), dict) and bool(reach["headers"]))
        or bool(reach.get("authorization"))
        or reach.get("connector_id") is not None
        or bool(reach.get("domain_secrets"))
        for tools in _tool_lists(body)
        for tool in tools
        for reach in _reaches(tool)
    )


def _reaches(tool: Any) -> list[dict[str, Any]]:
    """The objects within a tool, itself included, outside its SCHEMAS: bounded, as a parsed
    body nests at most canonical.MAX_DEPTH deep."""
    found: list[dict[str, Any]] = []
    pending = [tool]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            found.append(value)
            pending.extend(item for name, item in value.items() if name not in SCHEMAS)
        elif isinstance(value, list):
            pending.extend(value)
    return found


def _tool_lists(body: dict[str, Any]) -> list[list[Any]]:
    """The body's `tools`, then each input item's."""
    items = body.get("input")
    holders = [body, *(items if isinstance(items, list) else ())]
    return [
        holder["tools"]
        for holder in holders
        if isinstance(holder, dict) and isinstance(holder.get("tools"), list)
    ]


SEAL = "sha256:"
_SEALED = re.compile(r"sha256:[0-9a-f]{64}")


def sealed(body: dict[str, Any], loaded: bool = False) -> dict[str, Any] | None:
    """The body with each credential its tools carry (CREDENTIALS) replaced by `sha256:` and
    its hex SHA-256 (every value of their `headers`, their `authorization`, a domain secret's
    `value`; of a `server_url`, what follows its host: some servers put a key in the path,
    which OpenAI cuts from the response object for that reason); None when it carries none.
    What the key names and a store keeps, so that an export or a committed cassette holds no
    token, as it holds no credential header: the upstream still receives the body as sent. A
    digest tells tokens apart (two end users' mailboxes stay two answers) and is the same for
    every process, so a recorded cassette replays. A cassette's line is `loaded`: a value it
    holds sealed stays as it is. A request's is sealed whatever it looks like, so that no one
    sending a token's digest reads what the token fetched. Not keyed by `--secret`, which
    would bind a cassette to one proxy: a guessable password gains nothing from this. An input
    item's tools are sealed as the body's are (`_tool_lists`). So is a signed URL's credential
    in a content part (`_sealed_parts`)."""
    hidden = _sealed_tools(body, loaded)
    items = body.get("input")
    if isinstance(items, list):
        kept = [_sealed_tools(item, loaded) if isinstance(item, dict) else item for item in items]
        if kept != items:
            hidden = hidden | {"input": kept}
    hidden = _sealed_parts(hidden, loaded)
    return None if hidden is body else hidden


def sealed_values(body: dict[str, Any], hidden: dict[str, Any]) -> Iterator[str]:
    """The strings of `body` that `sealed` (which gave `hidden`) replaced: the secrets its
    tools carry, as sent, for whoever must look for them elsewhere (`proxy.core.echoes`)."""
    pending: list[tuple[Any, Any]] = [(body, hidden)]
    while pending:  # bounded: a parsed body nests at most canonical.MAX_DEPTH deep
        sent, kept = pending.pop()
        if sent is kept:
            continue
        if isinstance(sent, dict) and isinstance(kept, dict):
            pending.extend((item, kept.get(name)) for name, item in sent.items())
        elif isinstance(sent, list) and isinstance(kept, list):
            pending.extend(zip(sent, kept, strict=False))
        elif isinstance(sent, str) and sent != kept:
            yield sent


def _sealed_tools(holder: dict[str, Any], loaded: bool) -> dict[str, Any]:
    """`holder` with its `tools` sealed; itself when they hold nothing to seal."""
    tools = holder.get("tools")
    if not isinstance(tools, list):
        return holder
    hidden = _sealed_within(tools, loaded)
    return holder if hidden is tools else holder | {"tools": hidden}


def _sealed_within(value: Any, loaded: bool) -> Any:
    """`value` with every CREDENTIALS field it holds, outside SCHEMAS, sealed; itself when it
    holds none. Recursive, bounded by canonical.MAX_DEPTH."""
    if isinstance(value, list):
        items = [_sealed_within(item, loaded) for item in value]
        return value if all(new is old for new, old in zip(items, value, strict=True)) else items
    if not isinstance(value, dict):
        return value
    hidden = {
        name: item if name in SCHEMAS else _sealed_field(name, item, loaded)
        for name, item in value.items()
    }
    return value if all(hidden[name] is item for name, item in value.items()) else hidden


def _sealed_field(name: str, value: Any, loaded: bool) -> Any:
    """A tool's field `name` holding `value`, sealed when it is a credential's; one of a shape
    the SDK does not give (which the upstream refuses) sealed whole."""
    if name == "headers" and isinstance(value, dict):
        headers = {header: _seal(secret, loaded) for header, secret in value.items()}
        return value if headers == value else headers
    if name == "server_url" and isinstance(value, str):
        return _sealed_url(value, loaded)
    if name == "domain_secrets" and isinstance(value, list):
        secrets = [_sealed_secret(secret, loaded) for secret in value]
        return value if secrets == value else secrets
    if name in CREDENTIALS - {"connector_id"} and value is not None:
        return _seal(value, loaded)
    return _sealed_within(value, loaded)


def _sealed_secret(secret: Any, loaded: bool) -> Any:
    """A domain secret with its `value` sealed (its domain and name, which say where it goes,
    kept); anything else (which the upstream refuses) sealed whole."""
    if not isinstance(secret, dict):
        return _seal(secret, loaded)
    if "value" not in secret:
        return secret
    return secret | {"value": _seal(secret["value"], loaded)}


def _sealed_url(url: str, loaded: bool) -> str:
    """The URL's scheme and host (without a user's password), then the digest of the whole
    URL as its path; one naming nothing past its host stays as it is, one naming no host (or
    that no parser reads, `http://[::1`) is its digest alone."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _seal(url, loaded)
    host = parts.netloc.rpartition("@")[2]
    if not host:
        return _seal(url, loaded) if url else url
    bare = parts.netloc == host and not parts.query and not parts.fragment
    if bare and (parts.path in ("", "/") or (loaded and _SEALED.fullmatch(parts.path[1:]))):
        return url
    return f"{parts.scheme}://{host}/{_seal(url, False)}"


SIGNING = ("sig", "token", "credential", "key", "secret", "password", "auth")
"""Parts of a query parameter's name (case-insensitive) whose value a signed URL's reader
proves itself with: AWS S3's `X-Amz-Signature`, `X-Amz-Credential`, `X-Amz-Security-Token`,
Google Cloud Storage's `X-Goog-Signature` and `X-Goog-Credential`, an Azure Blob SAS's `sig`,
CloudFront's `Signature` and `Key-Pair-Id`, a generic `token`, `signature`, `access_token`,
`key` or `api_key`. A name holding one by chance (`design`, `monkey`) only loses readability;
the rest (`X-Amz-Expires`, `se`, `sp`, `Policy`) says what the URL grants and stays."""

_QUERY_PIECE = re.compile(r"([^&;=]*)(=?)([^&;]*)")


def _sealed_parts(body: dict[str, Any], loaded: bool) -> dict[str, Any]:
    """`body` with the signed URLs its content parts hold sealed (`_sealed_links`): a chat
    message's `content` (an `image_url`'s `url`, a `file`'s), a Responses input item's
    `content` and `output` (an `input_image`'s `image_url`, an `input_file`'s `file_url`, a
    tool output's parts); itself when they hold none. The key names the object the URL
    reads, as it names an image's bytes; only its credential is digested, as a tool's is.
    Content given as a string is text, read as written. No byte search comes first (as
    `_MARKS`): this reads two fields of each item and no string past its first 8 characters,
    where a search reads every byte: measured, it cost 2.5 times this walk on a chat of 1000
    text messages, and 300 times on one holding a megabyte's image as `data:`."""
    for field, parts in (("messages", ("content",)), ("input", ("content", "output"))):
        items = body.get(field)
        if not isinstance(items, list):
            continue
        kept = items
        for index, item in enumerate(items):
            for part in parts if isinstance(item, dict) else ():
                value = item.get(part)
                hidden = _sealed_links(value, loaded) if isinstance(value, list) else value
                if hidden is not value:
                    kept = kept if kept is not items else list(items)
                    kept[index] = kept[index] | {part: hidden}
        if kept is not items:
            body = body | {field: kept}
    return body


def _sealed_links(value: Any, loaded: bool) -> Any:
    """`value` with every http(s) URL string it holds, at any depth, sealed (`_sealed_query`);
    itself when it holds none. Recursive, bounded by canonical.MAX_DEPTH."""
    if isinstance(value, list):
        items = [_sealed_links(item, loaded) for item in value]
        return value if all(new is old for new, old in zip(items, value, strict=True)) else items
    if isinstance(value, dict):
        hidden = {name: _sealed_links(item, loaded) for name, item in value.items()}
        return value if all(hidden[name] is item for name, item in value.items()) else hidden
    if isinstance(value, str) and value[:8].lower().startswith(("http://", "https://")):
        sealed_url = _sealed_query(value, loaded)
        return value if sealed_url == value else sealed_url
    return value


def _sealed_query(url: str, loaded: bool) -> str:
    """The URL with the value of each query parameter whose name holds one of SIGNING, and of
    its user's password, replaced by its digest (of the value as written, so a line recorded
    from the request keys as the request does); the rest as written. A `data:` URL is none."""
    head, mark, rest = url.partition("?")
    query, hash_mark, fragment = rest.partition("#")

    def piece(found: re.Match[str]) -> str:
        name, equals, value = found.groups()
        if not equals or not any(part in name.lower() for part in SIGNING):
            return found.group()
        return f"{name}={_seal(value, loaded)}"

    if mark:
        url = f"{head}?{_QUERY_PIECE.sub(piece, query)}{hash_mark}{fragment}"
    scheme, slashes, tail = url.partition("://")
    authority, slash, path = tail.partition("/")
    user, at, host = authority.rpartition("@")
    name, colon, password = user.partition(":")
    if not at or not colon:
        return url
    return f"{scheme}{slashes}{name}:{_seal(password, loaded)}@{host}{slash}{path}"


def _seal(value: Any, loaded: bool) -> str:
    if loaded and isinstance(value, str) and _SEALED.fullmatch(value):
        return value
    data = value.encode() if isinstance(value, str) else canonical.dumps(value)
    return SEAL + hashlib.sha256(data).hexdigest()
