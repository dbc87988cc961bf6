"""Which request headers the cache key covers (pure): every one a cached route sends upstream,
by name and value, unless it is known not to change the answer.

Deny by default, as a cache reading `Vary` on every header would: gateways route by headers no
list can name ahead (Portkey's `x-portkey-provider` and `x-portkey-custom-host`, Helicone's
`Helicone-Target-Url`, Kong's `X-Host-Override`, `OpenAI-Organization`, ...). Left unkeyed, one
tenant's `x-portkey-custom-host: <its own server>` would store that server's answer under the
plain request's key, for every other tenant's HIT. Left out of the key are only:

- INERT names (and INERT_PREFIXES): what SDKs and the infrastructure around them send per call,
  which no upstream answers by: the OpenAI SDKs' `User-Agent`, `Accept` and `X-Stainless-*`
  (their retry count, their timeout), `Idempotency-Key`, tracing and correlation ids, the
  client's address as load balancers pass it, and the cache's own `Cache-Control`;
- names that never reach the upstream as sent (NOT_SENT: hop-by-hop and what `Connection`
  names, `Host`, framing, REROUTING, `X-Repro-*`, `Proxy-*`) or whose effect the key covers
  already (the body it hashes is sent as plain JSON: `Content-Type`, `Content-Encoding`,
  `Accept-Encoding`);
- credential headers: the tenant's, which partition the cache in `key` scope and are shared by
  design in `shared` scope (every accepted key gets the same answers), except `Cookie` there,
  which carries state besides identity (sticky backends, experiments, sessions). There only the
  names listed (`STANDARD`, `--credential-header`) count: a name read as a credential for its
  words alone (`cf-aig-cache-key`, which names a gateway's cache entry) is keyed, so that a name
  misread splits the cache and never joins two requests;
- names the operator adds (`--unkeyed-header`), exactly or as a `prefix*`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from multidict import MultiMapping

from proxy.core.credentials import (
    IN_QUERY,
    QUERY_PARAMETERS,
    STANDARD,
    Credentials,
    named_as_one,
    parse_names,
    refuse_disagreeing,
)
from proxy.core.hops import HOP_BY_HOP, connection_named

HeaderLines = tuple[tuple[str, str], ...]
"""(lower-case name, value) of every keyed header line, sorted by name; a name's lines keep
the order they were sent in."""

REROUTING = frozenset(
    {
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-forwarded-host",
        "x-forwarded-server",
        "x-forwarded-prefix",
        "x-forwarded-proto",
        "x-forwarded-scheme",
        "x-forwarded-port",
        "x-host",
        "forwarded",
    }
)
"""Headers some servers and frameworks read instead of the request line or the Host (IIS and
Symfony route by X-Original-URL, Express and others honour method overrides, many build URLs
from X-Forwarded-Host): on a cached route the answer would be another resource's, or name
another host, stored under a key that names neither. They never go upstream from a cached
route (web cache poisoning's classic unkeyed inputs)."""

NOT_SENT = HOP_BY_HOP | REROUTING | {"host", "content-length", "expect"}
"""Never sent upstream from a cached route as the client sent them."""

KEYED_OTHERWISE = frozenset({"accept-encoding", "content-type", "content-encoding"})
"""The proxy sends its own Accept-Encoding and the body as plain JSON, which the key hashes."""

INERT = frozenset(
    {
        # what the OpenAI SDKs (and HTTP clients) send with every call, beside X-Stainless-*
        "user-agent",
        "accept",
        "idempotency-key",
        # the client's word to this cache, read by the proxy itself
        "cache-control",
        "pragma",
        # tracing and correlation
        "traceparent",
        "tracestate",
        "baggage",
        "sentry-trace",
        "b3",
        "uber-trace-id",
        "x-cloud-trace-context",
        "x-amzn-trace-id",
        "x-request-id",
        "x-correlation-id",
        "x-client-request-id",
        "x-ms-client-request-id",
        "x-ot-span-context",
        "newrelic",
        "elastic-apm-traceparent",
        "x-request-start",
        "x-envoy-attempt-count",
        # who asks, from where, as the load balancers in front of the proxy say
        "x-forwarded-for",
        "x-real-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "cf-ray",
    }
)
"""Request headers known not to change an answer: never keyed (lower case)."""

INERT_PREFIXES = ("x-stainless-", "x-b3-", "x-datadog-", "uberctx-", "sec-fetch-", "sec-ch-")
"""Families of INERT names: the OpenAI SDKs' per-call headers, Zipkin's, Datadog's, Jaeger's,
and the fetch metadata and client hints a runtime adds by itself (Node's fetch sends
`sec-fetch-mode`)."""

_NEVER_KEYED_PREFIXES = ("x-repro-", "proxy-")  # read by the proxy, or hop-by-hop

ASKS_NOTHING = frozenset({("accept-language", "*")})
"""Lines of a keyed name whose value, sent alone, asks what the header's absence asks, so keyed
as absent: `Accept-Language: *` is any language (RFC 9110 12.5.4), and Node's fetch sends it
with every request; keyed, the OpenAI JS SDK and the Python one would never share an answer. Any
language named is keyed."""

MAX_SPELLINGS = 4096
"""Names as sent that a process remembers as never keyed (see `Keying.lines`): a client may
spell each name in any case, and hostile ones only make the next request take the longer way."""

MAX_SPELLING = 128
"""Characters of a name remembered as spelled: a header name may be as long as a header line
(8 KiB), and MAX_SPELLINGS of those would be tens of MiB; a longer one takes the longer way."""


class Keying:
    """One process's rule: which header names the key covers, and the keyed lines of a request.

    A request whose every header name (as sent) was seen before to be unkeyed, nearly every
    request, is checked in one set operation over its names, without a copy."""

    def __init__(
        self, unkeyed: Iterable[str] = (), carriers: Iterable[str] = STANDARD, shared: bool = False
    ) -> None:
        """`unkeyed`: the operator's inert names (lower case, `prefix*` for a family);
        `carriers`: the credential headers listed; `shared`: the cache is one for all keys."""
        names = tuple(unkeyed)
        self._inert = INERT | NOT_SENT | KEYED_OTHERWISE | {n for n in names if not n.endswith("*")}
        self._prefixes = (
            *INERT_PREFIXES,
            *_NEVER_KEYED_PREFIXES,
            *(n[:-1] for n in names if n.endswith("*")),
        )
        self._carriers = frozenset(carriers)
        self._shared = shared
        self._base = {spelled for name in self._inert for spelled in (name, _titled(name))}
        self._unkeyed_spellings = set(self._base)

    def keys(self, name: str) -> bool:
        """Whether a (lower-case) header name is keyed, by its value, when a request sends it."""
        if name in self._inert or name.startswith(self._prefixes):
            return False
        if name in self._carriers:
            return self._shared and name == "cookie"
        return self._shared or not named_as_one(name)

    def __contains__(self, name: object) -> bool:
        """Whether the key covers a (lower-case) header name, as a `Vary` naming it asks: keyed
        by its value, or, in `key` scope, a credential partitioning the cache."""
        if not isinstance(name, str) or name == "*":  # `Vary: *`: varies by what no key names
            return False
        if self.keys(name):
            return True
        credential = name in self._carriers or named_as_one(name)
        return credential and not self._shared and not name.startswith(_NEVER_KEYED_PREFIXES)

    def lines(self, headers: MultiMapping[str]) -> HeaderLines:
        """The keyed lines of a request's headers (a multidict: every line, repeated names
        too). Names seen unkeyed before, as spelled, need no lower-casing nor rule."""
        if self._unkeyed_spellings.issuperset(headers):
            return ()
        found = []
        spellings = self._unkeyed_spellings
        for name, value in headers.items():
            if name in spellings:
                continue
            lower = name.lower()
            if self.keys(lower):
                found.append((lower, value))
                continue
            if len(name) > MAX_SPELLING:
                continue
            if len(spellings) >= MAX_SPELLINGS:
                spellings.clear()
                spellings.update(self._base)
            spellings.add(name)
        if found and "Connection" in headers:
            found = _sent(found, headers.getall("Connection"))
        if found:
            found = _asking(found)
        found.sort(key=_name)
        if len(found) > 1:
            refuse_disagreeing(found, exempt="cookie")
        return tuple(found)


def _sent(found: list[tuple[str, str]], connection: list[str]) -> list[tuple[str, str]]:
    """The lines of `found` the proxy forwards: none that `Connection` names as hop-by-hop (on
    any of its lines). Keyed by a value never sent, the answer to a request without it would
    be stored under the key of one with it."""
    dropped = connection_named(connection)
    return [line for line in found if line[0] not in dropped]


def _asking(found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`found` without a line that asks nothing (ASKS_NOTHING) when it is its name's only one:
    beside another (`*` and `fa`) it is kept, and the two are refused as any two lines of one
    name that disagree (`refuse_disagreeing`), as they were before any line was left out."""
    names = [name for name, _ in found]
    return [line for line in found if line not in ASKS_NOTHING or names.count(line[0]) > 1]


def _name(line: tuple[str, str]) -> str:
    return line[0]


def _titled(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


def vary_of(headers: HeaderLines, in_query: Credentials, shared: bool) -> str:
    """The digest the key (and a response's id index) names besides body and keyed query: the
    keyed headers, and in `shared` scope the query parameters `split_query` read as
    credentials for their words alone (`?route_token=`): sent upstream, they are no listed
    credential there either (see `Keying.keys`). A digest, so their values stay out of a store
    as the keyed query would not."""
    if shared and in_query:
        misread = tuple(p for p in in_query if p[0][len(IN_QUERY) :] not in QUERY_PARAMETERS)
        return digest((*headers, *misread))
    return digest(headers)


def digest(lines: HeaderLines) -> str:
    """What the key and a stored entry name of the keyed lines: SHA-256 of each name and value
    as netstrings of the bytes sent (a value aiohttp could not decode holds them as
    surrogates), so no two sets of lines give the same input; "" for none. A digest, not the
    values: a cassette names it and never holds a header."""
    if not lines:
        return ""
    out = bytearray()
    for name, value in lines:
        for part in (name, value):
            raw = part.encode("utf-8", "surrogateescape")
            out += b"%d:%s," % (len(raw), raw)
    return hashlib.sha256(out).hexdigest()


def parse_unkeyed(text: str) -> tuple[str, ...]:
    """`--unkeyed-header`: header names, each exact or a `prefix*`; ValueError names a bad one."""
    found = parse_names(text)
    for name in found:
        if "*" in name[:-1] or name == "*":
            raise ValueError(
                f"{name!r}: expected a name, or a prefix ending in one '*' (a bare '*' would "
                "leave every header out of the key)"
            )
    return found
