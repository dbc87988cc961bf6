"""Which request headers carry a tenant's credential, and what of them partitions the cache.

Every credential-bearing header present counts, whatever its scheme: `Authorization` (Bearer,
Basic, anything), Azure's `api-key`, Anthropic-style `x-api-key`, well-known gateways' key
headers (`STANDARD`), the names an operator adds with `--credential-header`, and any other
whose name says it holds one (`named_as_one`: `apikey`, `X-Auth-Token`, …); so do the query
parameters gateways read a key from (`QUERY_PARAMETERS`, and names that say so alike), which
are then neither keyed nor stored: an answer recorded into a cassette must not carry the key
it was asked with. A request carrying none is `anonymous`. Two requests that differ in any of
these values must never share a partition, so the HMAC input encodes every name and value
without ambiguity. Names are compared in lower case, as HTTP does.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Collection, Iterable, Iterator
from urllib.parse import unquote_plus

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.core.hops import connection_named
from proxy.core.policy import ANONYMOUS
from proxy.errors import InvalidHeader, InvalidParameter

STANDARD = (
    "authorization",
    "api-key",
    "x-api-key",
    "ocp-apim-subscription-key",  # Azure API Management, often in front of Azure OpenAI
    "cf-aig-authorization",  # Cloudflare AI Gateway
    "x-goog-api-key",
    "x-portkey-api-key",
    "x-portkey-virtual-key",
)
"""Header names read as credentials whatever the settings say: the APIs' own, and well-known
gateways' whose callers may send no other. A key read as none makes its caller `anonymous`,
whose answers, once the gateway served one, every keyless caller reads."""

QUERY_PARAMETERS = frozenset({"subscription-key", "api-key", "api_key", "key"})
"""Query parameters read as credentials: Azure API Management's `subscription-key`, Google's
`key`, and the spellings of `api-key` some gateways take in a URL."""

CREDENTIAL_WORDS = frozenset(
    {"auth", "authorization", "apikey", "key", "token", "secret", "password", "passwd",
     "credential", "credentials", "cookie", "jwt", "bearer"}
)  # fmt: skip
"""Words of a header or parameter name that say it holds a credential (see `named_as_one`)."""

QUERY_WORDS = frozenset({"sig", "signature", "code"})
"""Words of a query parameter's name that say it holds a credential in a URL only: a signed
URL's signature (an Azure SAS's `sig`, `X-Amz-Signature`, as `sealing.SIGNING` reads a URL in
a body), an Azure Functions key (`code`). A header so named says nothing (an HTTP message
signature is new per request, and read as a credential would split every request off)."""

NOT_CREDENTIALS = frozenset({"idempotency-key", "idempotency_key"})
"""Names made of those words that hold no credential: a retry's identity, new per request."""

_WORD_CUES = (
    *("key", "token", "auth", "secret", "pass", "credential", "cookie", "sig", "code", "jwt"),
    "bearer",
)
_WORDS = re.compile(r"[^a-z0-9]+")


@functools.lru_cache(maxsize=1024)
def named_as_one(name: str) -> bool:
    """Whether a (lower-case) header or query parameter name says it holds a credential:
    one of its words (split at anything but letters and digits) is in CREDENTIAL_WORDS, or
    ends in `apikey` or `token` (`x-myapikey`, `authtoken`). Gateways take keys under
    names no list holds (Kong's `apikey`, LiteLLM's `x-litellm-api-key`, `X-Auth-Token`); read
    as no key, their callers would all be `anonymous`, one partition. A name read so wrongly
    only splits a tenant's cache, never joins two. Remembered: a few names make nearly all
    traffic, and hostile ones only evict each other."""
    if name in NOT_CREDENTIALS or name.startswith(("x-repro-", "proxy-")):
        return False  # the proxy's own, and hop-by-hop ones no upstream ever receives
    return any(
        word in CREDENTIAL_WORDS or word.endswith(("apikey", "token"))
        for word in _WORDS.split(name)
    )


class Carriers:
    """The credential-bearing header names as a collection: those listed, and any other a
    request carries whose name says it is one (`named_as_one`)."""

    def __init__(self, listed: tuple[str, ...] = ()) -> None:
        self.listed = listed

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.listed or named_as_one(name.lower()))

    def __iter__(self) -> Iterator[str]:
        return iter(self.listed)

    def __len__(self) -> int:
        return len(self.listed)


IN_QUERY = "?"
"""The prefix of a credential's name when it came as a query parameter (`?subscription-key`):
no header name starts with it."""

Credentials = tuple[tuple[str, str], ...]
"""(lower-case name, value) pairs, in the order of `names` and then as sent; a query
parameter's value as it was written in the URL (still percent-encoded)."""

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 5.6.2


def parse_names(text: str) -> tuple[str, ...]:
    """Header names from a comma-separated setting, lower case; ValueError names a bad one."""
    found = []
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            continue
        if not _TOKEN.match(name):
            raise ValueError(
                f"{name!r} is not an HTTP header name: expected letters, digits and -_.!#$%&'*+^`|~"
            )
        if name.startswith("x-repro-"):
            raise ValueError(f"{name!r} is read by the proxy and never reaches the upstream")
        found.append(name)
    return tuple(found)


def names(extra: Iterable[str]) -> tuple[str, ...]:
    """The standard names and the operator's, each once."""
    return tuple(dict.fromkeys((*STANDARD, *(n.lower() for n in extra))))


def extract(headers: CIMultiDictProxy[str], carriers: tuple[str, ...] = STANDARD) -> Credentials:
    """Every non-empty value of a credential-bearing header: those `carriers` lists, in its
    order, then any other whose name says it is one, as sent. An empty tuple means anonymous."""
    found: list[tuple[str, str]] = []
    for name in carriers:
        if name in headers:  # most are absent, and a miss is cheaper to test than to getall
            for value in headers.getall(name):
                if value.strip():
                    found.append((name, value))
    for raw_name, value in headers.items():
        named = _as_named(raw_name)
        if named is not None and named not in carriers and value.strip():
            found.append((named, value))
    if len(found) > 1:  # nearly every request carries one credential, or none
        refuse_disagreeing(sorted(found, key=_first), exempt="cookie")
    return tuple(found)


def _first(line: tuple[str, str]) -> str:
    return line[0]


def refuse_disagreeing(lines: Iterable[tuple[str, str]], exempt: str = "") -> None:
    """Refuse a header (or query parameter) given twice with different values (`lines` sorted
    by name, stably). The proxy keys and scopes by every line, while an upstream, or a gateway
    in front of the proxy, may read only the first or the last: `Bearer A` then `Bearer B`
    would be one partition answered as A or as B, as the reader picks. Identical lines read
    alike.
    `exempt`: a name whose lines every reader joins (Cookie, RFC 9113 8.2.3)."""
    previous = ("", "")
    for line in lines:
        if line[0] == previous[0] and line[1] != previous[1] and line[0] != exempt:
            name = line[0].removeprefix(IN_QUERY)
            what = "query parameter" if name != line[0] else "header"
            raise InvalidHeader(
                f"The {what} {name} is given more than once, with different values.", name
            )
        previous = line


@functools.lru_cache(maxsize=1024)
def _as_named(raw_name: str) -> str | None:
    """A header name as sent, lower case if it says it holds a credential, else None: asked of
    every header of every request, and remembered by the name as sent."""
    name = raw_name.lower()
    return name if named_as_one(name) else None


def hop_by_hop(connection: Iterable[str], carriers: Collection[str] = STANDARD) -> str | None:
    """The first credential header a request's Connection header names, if any. A proxy
    removes the headers Connection names before forwarding (RFC 9110 7.6.1): the upstream would
    answer without the credential the tenant is made of, and its 2xx would vouch for those
    credentials, revoked or made up, as if it had accepted them."""
    if not connection:  # nearly every request
        return None
    return min((name for name in connection_named(connection) if name in carriers), default=None)


_SEPARATORS = re.compile("[&;]")
"""What separates query parameters: `&`, and `;` as Rack, older Python and others read it."""


def split_query(query: str) -> tuple[str, Credentials]:
    """The query without its credential parameters, and those parameters as credentials. A
    query that names none, nearly every one, comes back as it is, byte for byte; otherwise the
    other parameters keep their order and spelling (joined by `&`). A parameter's name is read
    as a server reads it (percent-decoded, any case, after a `&` or a `;`), so `%6Bey=` is
    `key=` too, and `a=1;key=` names one: otherwise a server splitting at `;` would take the
    key the proxy kept in the cache key and stored, its caller counted as keyless."""
    if not query:  # most requests
        return query, ()
    lowered = query.lower()
    if "%" not in query and not any(cue in lowered for cue in _WORD_CUES):
        return query, ()
    items = _SEPARATORS.split(query)
    kept: list[str] = []
    found: list[tuple[str, str]] = []
    for item in items:
        raw_name, _, value = item.partition("=")
        name = unquote_plus(raw_name).strip().lower()
        if not value or not _in_query_as_one(name):
            kept.append(item)  # one without a value holds no credential, and is still sent
        else:
            found.append((IN_QUERY + name, value))
    if len(kept) == len(items):
        return query, ()
    return "&".join(kept), tuple(found)


def of_request(
    headers: CIMultiDictProxy[str], query: str, carriers: tuple[str, ...] = STANDARD
) -> Credentials:
    """Every credential a request carries: its credential headers, then its query's. A query
    carrying one and separating parameters with `;` is refused: the key names the query without
    its credentials, cut at `&` and `;` and joined by `&`, while servers read `;` two ways (some
    split at it, some do not), so `foo=1;api-version=V&key=K` would share the key of
    `foo=1&api-version=V&key=K`, which an upstream splitting at `&` alone answers otherwise.
    Read here, every route that keys or partitions by the query refuses it alike."""
    in_query = split_query(query)[1]
    if in_query and ";" in query:
        raise InvalidParameter(
            "The query carries a credential and separates parameters with ';', which servers "
            "read two ways (some split at it, some do not): separate them with '&' alone.",
            "query",
        )
    if len(in_query) > 1:  # `?key=A&key=B`: a server reads the first, or the last
        refuse_disagreeing(sorted(in_query, key=_first))
    return extract(headers, carriers) + in_query


def _in_query_as_one(name: str) -> bool:
    """Whether a (decoded, lower-case) query parameter's name says it holds a credential."""
    return (
        name in QUERY_PARAMETERS
        or named_as_one(name)
        or any(word in QUERY_WORDS for word in _WORDS.split(name))
    )


def in_query(credentials: Credentials) -> str:
    """The credentials that came as query parameters, as a query string to send them again."""
    return "&".join(f"{name[1:]}={value}" for name, value in credentials if name[:1] == IN_QUERY)


def with_query(path: str, query: str, credentials: Credentials) -> str:
    """`path` with `query` and the query credentials among `credentials` appended."""
    full = "&".join(part for part in (query, in_query(credentials)) if part)
    return f"{path}?{full}" if full else path


def material(credentials: Credentials) -> bytes:
    """The HMAC input. A lone bearer token or `api-key` is hashed as the bare key (the scope the
    proxy always gave it, and the one `cassette import --api-key` computes); anything else is a
    NUL byte (never part of a header value) and then each sorted name and value as netstrings,
    so no two different sets of headers give the same bytes."""
    if len(credentials) == 1:
        key = _bare_key(*credentials[0])
        if key is not None and "\x00" not in key:
            return _raw(key)
    out = bytearray(b"\x00")
    for name, value in sorted(credentials):
        for part in (_raw(name), _raw(value)):
            out += b"%d:%s," % (len(part), part)
    return bytes(out)


def _bare_key(name: str, value: str) -> str | None:
    if name == "api-key":
        return value
    scheme, _, token = value.partition(" ")
    if name == "authorization" and scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _raw(text: str) -> bytes:
    # aiohttp hands undecodable header bytes over as surrogates: hash the bytes as sent.
    return text.encode("utf-8", "surrogateescape")


def scope(credentials: Credentials, secret: bytes) -> str:
    """The tenant's partition: a keyed HMAC of its credentials, never the credentials."""
    if not credentials:
        return ANONYMOUS
    return hmac.new(secret, material(credentials), hashlib.sha256).hexdigest()[:32]


def upstream_headers(credentials: Credentials) -> CIMultiDict[str]:
    """The caller's credential headers exactly as sent, to ask the upstream about them (those
    that came in the query go in the query again: `with_query`)."""
    return CIMultiDict((name, value) for name, value in credentials if name[:1] != IN_QUERY)


def stranger(credentials: Credentials) -> Credentials:
    """Credentials of the same shape (names, Authorization scheme) with made-up values: what
    an upstream answers to these shows whether it tells a real key from a random one."""
    out: list[tuple[str, str]] = []
    for name, value in credentials:
        made_up = "sk-repro-" + secrets.token_urlsafe(24)
        scheme, space, _ = value.partition(" ")
        if name == "authorization" and space:
            made_up = f"{scheme} {made_up}"
        out.append((name, made_up))
    return tuple(out)


def shape(credentials: Credentials) -> str:
    """What `stranger` keeps of the credentials (names, and the Authorization scheme), as a
    digest: remembered per shape, and a request may carry 128 header names of 8 KiB."""
    names = (
        f"{name} {value.partition(' ')[0].lower()}" if name == "authorization" else name
        for name, value in credentials
    )
    return hashlib.sha256("\n".join(names).encode("utf-8", "surrogateescape")).hexdigest()
