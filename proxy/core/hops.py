"""Hop-by-hop headers (pure): what holds for one connection only, and is never forwarded.

The names a `Connection` header lists are hop-by-hop too (RFC 9110 7.6.1). What the proxy
forwards, keys and reads as a tenant's credential must all read that list the same way, or a
name one of them drops would still count for another: one parser serves them all.
"""

from __future__ import annotations

from collections.abc import Iterable

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
"""RFC 9110 7.6.1: meaningful for one connection only, never forwarded."""


def connection_named(lines: Iterable[str]) -> frozenset[str]:
    """The header names (lower case) that a Connection header lists, on any of its lines."""
    return frozenset(name.strip().lower() for line in lines for name in line.split(","))
