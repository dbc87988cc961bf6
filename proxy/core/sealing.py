"""Credentials a request's body carries, and the body with them sealed (pure).

A tool may carry what reaches a third party on its owner's behalf: an MCP server's headers or
OAuth token, a connector, a container's domain secrets (CREDENTIALS); a content part may hold
a URL signed for its owner; a gateway may take its own key in the body (`in_body`). Such a
request is its tenant's own (`owned.tenants_own`), and what the key names and a store, an
export or a cassette keeps holds each of those values as its SHA-256 (`sealed`), never as
sent: the upstream alone receives them. `proxy.core.echoes` looks for the same values
(`sealed_values`) in an answer before it is stored.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from proxy.core import canonical
from proxy.core.credentials import named_as_one

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


API_FIELDS = frozenset({"prompt_cache_key"})
"""Fields of the API a credential's name would match (`named_as_one`) that hold none."""

HEADER_FIELDS = frozenset({"extra_headers", "headers"})
"""Fields some gateways read headers from, to send on to their own upstream: every value is
sealed, as a tool's `headers` are (which of them holds a key, the proxy cannot tell)."""


def in_body(holder: dict[str, Any]) -> list[str]:
    """The names of the fields of `holder` (a body, or its `metadata`) holding a credential
    for a gateway: LiteLLM's client-side `api_key`, `azure_ad_token`, `aws_secret_access_key`,
    an `extra_headers` object; any name a header's or a query's would be read as a credential
    by (`named_as_one`), the API's own fields aside (API_FIELDS). Empty values hold none."""
    return [
        name
        for name, value in holder.items()
        if _credential_name(name) and value not in (None, "", {}, [])
    ]


@functools.lru_cache(maxsize=1024)
def _credential_name(name: str) -> bool:
    """Remembered: every request's body is read so, and a few names make nearly all of them."""
    return name not in API_FIELDS and (name in HEADER_FIELDS or named_as_one(name.lower()))


def _metadata(body: dict[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def carries_credentials(body: dict[str, Any]) -> bool:
    """Whether a tool carries credentials for the server it calls (CREDENTIALS): `headers`
    holding any (the proxy cannot tell which header a third party reads a key in), an
    `authorization`, a `connector_id`, which always reads its user's account (Gmail, Dropbox)
    with one, or `domain_secrets` holding any. A tool with empty or no headers reaches a server
    that answers anyone sending the same body, so names nothing; nor does a `server_url`
    alone (sealed all the same). Tools are read where a body gives them: its `tools`, and an
    input item's (`additional_tools`, `tool_search_output`). So does a gateway's credential in
    the body or its `metadata` (`in_body`)."""
    if in_body(body) or in_body(_metadata(body)):
        return True
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
    in a content part (`_sealed_parts`), and a gateway's in the body or its `metadata`
    (`in_body`)."""
    hidden = _sealed_fields(body, loaded)
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        fields = _sealed_fields(metadata, loaded)
        if fields is not metadata:
            hidden = hidden | {"metadata": fields}
    hidden = _sealed_tools(hidden, loaded)
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


def _sealed_fields(holder: dict[str, Any], loaded: bool) -> dict[str, Any]:
    """`holder` with the fields `in_body` names sealed (each header of a HEADER_FIELDS object,
    and any other value whole); itself when it holds none."""
    if not any(map(_credential_name, holder)):  # nearly every body: no call per field
        return holder
    names = in_body(holder)
    if not names:
        return holder
    return holder | {name: _sealed_field_value(name, holder[name], loaded) for name in names}


def _sealed_field_value(name: str, value: Any, loaded: bool) -> Any:
    if name in HEADER_FIELDS and isinstance(value, dict):
        return {header: _seal(secret, loaded) for header, secret in value.items()}
    return _seal(value, loaded)


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
    `owned._MARKS`): this reads two fields of each item and no string past its first 8 characters,
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
    """A string's digest is of its UTF-8 bytes; anything else's of its JSON text after a byte
    UTF-8 never holds (0xFF), so that `"1"` and `1` (which the upstream tells apart, and
    refuses one of) are two keys."""
    if loaded and isinstance(value, str) and _SEALED.fullmatch(value):
        return value
    data = value.encode() if isinstance(value, str) else _NOT_TEXT + canonical.dumps(value)
    return SEAL + hashlib.sha256(data).hexdigest()


_NOT_TEXT = b"\xff"
