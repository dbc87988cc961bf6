"""What parsing a body costs, told without parsing it (pure): the event loop parses only what
costs it a few milliseconds at most, and hands the rest to a child process or refuses it."""

from __future__ import annotations

OFF_LOOP_BODY = 1 << 20
"""Bytes from which a body, a client's or the upstream's, is parsed off the loop."""

CONTAINERS_ON_LOOP = 8192
"""Arrays and objects a body may open and still be parsed on the loop. Size alone does not
bound the work: a MiB of prose parses in 3 ms, a MiB of nested empty arrays in 700 (orjson
makes each a list, the canonical walk visits each, about a microsecond apiece), and a client
sending one without credentials held every other request, HITs included, that long."""


def containers(data: bytes | bytearray) -> int:
    """Arrays and objects `data` may open: its brackets and braces, those inside strings too
    (an estimate from above, which costs a microsecond or two per KiB)."""
    return data.count(b"[") + data.count(b"{")


def heavy(data: bytes) -> bool:
    """Whether parsing `data` belongs off the loop."""
    return len(data) >= OFF_LOOP_BODY or containers(data) > CONTAINERS_ON_LOOP
