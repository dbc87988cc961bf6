"""Which headers cross the proxy, and which answers are framed too oddly to trust (pure).

Hop-by-hop headers never cross; an upstream's header that is not a token, or whose value holds a
line break or another control character, is dropped before it is sent on or stored; and an
answer framed as smugglers frame it (a Transfer-Encoding other than `chunked` alone, or beside a
Content-Length), or whose status is no final answer (a 101 the proxy never asked for), is
refused.
"""

from __future__ import annotations

import re

from multidict import CIMultiDict, CIMultiDictProxy

from proxy import __version__
from proxy.core.entry import is_content_type
from proxy.core.hops import HOP_BY_HOP, connection_named
from proxy.core.inflate import CODINGS

Headers = CIMultiDict[str] | CIMultiDictProxy[str]

USER_AGENT = f"repro-proxy/{__version__}"

REQUEST_SKIP = HOP_BY_HOP | {"host", "content-length", "expect"}
"""What never goes upstream as the client sent it; callers add to it (lower case)."""
_RESPONSE_SKIP = HOP_BY_HOP | {"content-length", "clear-site-data"}
"""`Clear-Site-Data` too: on the proxy's origin an upstream's would clear the operators' page's
storage, its session with it (which INERT's sandbox does not keep a header from doing)."""
_DECODED_SKIP = _RESPONSE_SKIP | {"content-encoding"}

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TOKENS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?: [!#$%&'*+.^_`|~0-9A-Za-z-]+)*")
_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _skipped(headers: Headers, fixed: frozenset[str]) -> frozenset[str]:
    """`fixed` plus whatever the Connection header names, on any of its lines (rarely
    anything: then no new set)."""
    if "Connection" not in headers:
        return fixed
    return fixed | connection_named(headers.getall("Connection"))


def request_headers(
    incoming: CIMultiDictProxy[str], skip: frozenset[str] = REQUEST_SKIP
) -> CIMultiDict[str]:
    """Headers to send upstream: end-to-end ones only, none of ours, Host left to the client.
    The client's User-Agent passes unchanged; a client without one is named as this proxy."""
    skip = _skipped(incoming, skip)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in skip or lower.startswith(("x-repro-", "proxy-")):
            continue
        out.add(name, value)
    if "User-Agent" not in out:
        out["User-Agent"] = USER_AGENT
    return out


def safe_headers(incoming: Headers) -> Headers:
    """The upstream's headers minus any whose name is not a token or whose value holds a line
    break or another control character: such a header is never sent on or stored. Almost
    every answer has none, and is checked in two scans without a copy."""
    if _TOKENS.fullmatch(" ".join(incoming.keys())) and not _UNSAFE_VALUE.search(
        " ".join(incoming.values())
    ):
        return incoming
    return CIMultiDict(
        (name, value)
        for name, value in incoming.items()
        if _TOKEN.fullmatch(name) and not _UNSAFE_VALUE.search(value)
    )


INERT = {
    "Content-Security-Policy": "sandbox; default-src 'none'",
    "X-Content-Type-Options": "nosniff",
}
"""On every answer that carries the upstream's bytes, fresh or stored. The proxy's origin also
serves the operators' page, whose session reads every stored prompt and answer: a page the
upstream (or a path to an http:// upstream) answered with, or a model's text under a Content-Type
that says HTML, must never run there. Sandboxed, it has an opaque origin and no session."""


DECODED = CODINGS
"""The codings of an answer the client is asked to decode (the proxy's own inflation reads the
one Content-Encoding line, whole); any other reaches the client as it came, labelled."""


def undecoded(headers: Headers) -> str | None:
    """The Content-Encoding of an answer the client was asked to decode and did not (`x-gzip`,
    `gzip, gzip`, a name of its own), or None: that body is not what the proxy reads as the
    answer, and its coding must reach the client with it."""
    coding = headers.get("Content-Encoding")
    if coding is None or coding.strip().lower() in DECODED | {"", "identity"}:
        return None
    return coding


def unstorable(headers: Headers) -> str | None:
    """Why an answer cannot be stored as the bytes it is, or None: in a coding the client did
    not decode (`undecoded`), labelled by two Content-Type lines, of which its caller reads
    one of its choice and a stored answer would keep one only, or by one an entry cannot keep
    (`is_content_type`: bytes that are not UTF-8 failed the write, and the answer with it)."""
    if undecoded(headers) is not None:
        return "Content-Encoding"
    types = headers.getall("Content-Type", ())
    if len(types) > 1:
        return "Content-Type twice"
    if types and not is_content_type(types[0]):
        return "Content-Type not text"
    return None


def coding_error(headers: Headers) -> str | None:
    """Why an answer to be decoded is refused, or None: with two Content-Encoding lines a
    decoder reads the first alone, so no header passed on or dropped would describe the
    bytes."""
    if len(headers.getall("Content-Encoding", ())) > 1:
        return "Content-Encoding twice"
    return None


def response_headers(incoming: Headers, decoded: bool) -> CIMultiDict[str]:
    """Headers to send back: end-to-end ones; length and encoding are the server's business.
    `X-Repro-*` headers are this proxy's word (on the cache, the seed, the fingerprint): an
    upstream's, or another repro-proxy's before it, never pass for it. INERT goes over the
    upstream's own. A `decoded` answer keeps a Content-Encoding that was not decoded."""
    decoded = decoded and undecoded(incoming) is None
    skip = _skipped(incoming, _DECODED_SKIP if decoded else _RESPONSE_SKIP)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in skip or lower.startswith("x-repro-"):
            continue
        out.add(name, value)
    out.update(INERT)
    return out


def status_error(status: int) -> str | None:
    """Why a status is no final answer to the proxy's request, or None. The HTTP client reads
    past informational answers (100, 103) but hands a 101 over as final; the proxy never asks
    for an upgrade, so passed on, a 101 would tell its client (or a reverse proxy pooling its
    connections to this one) that the connection switched protocols, and the bytes after it
    would be read as the new protocol's. Beyond 599 there is no HTTP status."""
    if 200 <= status <= 599:
        return None
    return f"status {status}, which is no final answer to this request"


def framing_error(headers: Headers) -> str | None:
    """Why an answer's framing is refused (RFC 9112 6.1, 6.3), or None: a Transfer-Encoding
    other than `chunked` alone, or beside a Content-Length, is how responses get smuggled.
    Every Transfer-Encoding line counts: `chunked` on one and `gzip` on the next is a body
    read to the connection's end by a reader of both, and a chunked one by a reader of the
    first alone."""
    if "Transfer-Encoding" not in headers:
        return None
    coding = ", ".join(headers.getall("Transfer-Encoding"))
    if "Content-Length" in headers:
        return "both Transfer-Encoding and Content-Length"
    if coding.strip().lower() != "chunked":
        return f"Transfer-Encoding {coding[:40]!r}"
    return None
