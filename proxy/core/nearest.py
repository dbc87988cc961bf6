"""The recorded request closest to one that was not recorded, and what tells them apart (pure).

A replay that misses is most often a request that changed a little: a reworded prompt, a new
parameter, one more tool. Showing the nearest recorded request and a diff of the two canonical
bodies says which, where "no match" says nothing. Bodies are compared as indented JSON with
sorted keys, so the diff reads line by line, one field or message per hunk.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from proxy.core.terminal import shown

MAX_DIFF_LINES = 60
MAX_LINE_CHARS = 240
# Ranking compares the start of each body: edit distance is quadratic, and a cassette of long
# conversations must not stall a test's failure report.
MAX_COMPARED = 16_384


@dataclass(frozen=True, slots=True)
class Request:
    """What was asked, as a replay matches it: route, partition and the canonical body."""

    route: str
    model: str
    namespace: str
    query: str
    body: str  # indented JSON, sorted keys (see `readable`)


def readable(body: bytes | str | dict[str, Any]) -> str:
    """A request body as indented JSON with sorted keys; text that is not JSON as it is. Either
    is printed in a test's failure: its control and format characters are shown as escapes."""
    value: Any = body
    if not isinstance(body, dict):
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            text = body.decode(errors="replace") if isinstance(body, bytes) else body
            return shown(text, keep="\n")
    dumped = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    return shown(dumped, keep="\n")


def closest(wanted: Request, recorded: Sequence[Request]) -> tuple[Request, float] | None:
    """The recorded request most like `wanted` and how alike (0..1): among those of its route
    and model if any, else of its route, else all; None when nothing is recorded."""
    for pool in (
        [r for r in recorded if (r.route, r.model) == (wanted.route, wanted.model)],
        [r for r in recorded if r.route == wanted.route],
        list(recorded),
    ):
        if pool:
            found = process.extractOne(
                wanted.body[:MAX_COMPARED],
                [r.body[:MAX_COMPARED] for r in pool],
                scorer=Levenshtein.normalized_similarity,
            )
            assert found is not None  # a non-empty pool always has a best match
            _, score, index = found
            return pool[index], float(score)
    return None


def body_diff(recorded: str, wanted: str, limit: int = MAX_DIFF_LINES) -> str:
    """A unified diff from the recorded body to the requested one, cut after `limit` lines."""
    lines = list(
        difflib.unified_diff(
            recorded.splitlines(), wanted.splitlines(), "recorded", "requested", lineterm="", n=2
        )
    )
    if len(lines) > limit:
        lines = [*lines[:limit], f"... {len(lines) - limit} more diff lines"]
    return "\n".join(_cut(line) for line in lines)


def _cut(line: str) -> str:
    return line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + "…"


def explain(wanted: Request, recorded: Sequence[Request]) -> str:
    """Why a request missed: the closest recorded request and a diff of the two bodies."""
    head = _cut(f"POST {wanted.route} (model {wanted.model or 'none'!r})")
    found = closest(wanted, recorded)
    if found is None:
        return f"{head}: nothing is recorded."
    near, alike = found
    where = [
        f"{name} {value!r}"
        for name, value, own in (
            ("route", near.route, wanted.route),
            ("model", near.model, wanted.model),
            ("namespace", near.namespace, wanted.namespace),
            ("query", near.query, wanted.query),
        )
        if value != own
    ]
    place = f" (recorded under {', '.join(where)})" if where else ""
    if near.body == wanted.body:
        return f"{head}: the same body is recorded{place}."
    similar = f"{alike:.0%}" if alike < 0.995 else "over 99%"
    return (
        f"{head}: the closest recorded request is {similar} alike{place}:\n"
        f"{body_diff(near.body, wanted.body)}"
    )
