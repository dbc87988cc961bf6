"""Which request headers carry a tenant's credential, and what of them partitions the cache.

Every credential-bearing header present counts, whatever its scheme: `Authorization` (Bearer,
Basic, anything), Azure's `api-key`, Anthropic-style `x-api-key`, well-known gateways' key
headers (`STANDARD`), and the names an operator adds with `--credential-header`. A request
carrying none is `anonymous`. Two requests that differ in any of these values must never share
a partition, so the HMAC input encodes every name and value without ambiguity. Names are
compared in lower case, as HTTP does.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.core.policy import ANONYMOUS

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

Credentials = tuple[tuple[str, str], ...]
"""(lower-case name, value) pairs, in the order of `names` and then as sent."""

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
    """Every non-empty value of a credential-bearing header; an empty tuple means anonymous."""
    found: list[tuple[str, str]] = []
    for name in carriers:
        if name in headers:  # most are absent, and a miss is cheaper to test than to getall
            for value in headers.getall(name):
                if value.strip():
                    found.append((name, value))
    return tuple(found)


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
    """The caller's credentials exactly as sent, to ask the upstream about them."""
    return CIMultiDict(credentials)


def stranger(credentials: Credentials) -> CIMultiDict[str]:
    """Credentials of the same shape (names, Authorization scheme) with made-up values: what
    an upstream answers to these shows whether it tells a real key from a random one."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in credentials:
        made_up = "sk-repro-" + secrets.token_urlsafe(24)
        scheme, space, _ = value.partition(" ")
        if name == "authorization" and space:
            made_up = f"{scheme} {made_up}"
        out.add(name, made_up)
    return out


def shape(credentials: Credentials) -> tuple[str, ...]:
    """What `stranger` keeps of the credentials: names, and the Authorization scheme."""
    return tuple(
        f"{name} {value.partition(' ')[0].lower()}" if name == "authorization" else name
        for name, value in credentials
    )
