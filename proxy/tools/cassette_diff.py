"""`repro-proxy cassette diff OLD NEW`: how two recordings of the same requests differ.

Requests are matched by what was asked (route, namespace, query, canonical body); answers are
compared by what they say (`proxy.core.answers`), so new ids and timestamps are not changes;
a recorded read (`proxy.core.reads`) by the whole object it holds.
Each request is identical, changed (with the normalized edit distance of the two answers: the
share of characters that differ; 1 for an image or a sound that changed, which are compared by
their digests), or only in one cassette. Exit status 1 when anything changed,
so a scheduled re-record can gate a pull request; 2 when a cassette cannot be read.
"""

from __future__ import annotations

import argparse
import base64
import sys
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from proxy.core import answers, reads
from proxy.core.terminal import shown
from proxy.core.textdistance import bounded_distance
from proxy.store import cassette, cassette_write
from proxy.tools.output import print_json

PREVIEW = 48
STATUSES = ("changed", "only_old", "only_new", "identical")


@dataclass(frozen=True, slots=True)
class Side:
    fingerprint: str
    recorded_at: str


@dataclass(frozen=True, slots=True)
class Compared:
    status: str  # one of STATUSES
    route: str
    model: str
    namespace: str
    prompt: str  # the start of the last message or input, to tell rows apart
    distance: float | None
    old: Side | None
    new: Side | None


def main(args: argparse.Namespace) -> int:
    try:
        rows = compare(cassette.records(args.old), cassette.records(args.new))
    except (OSError, cassette.CassetteError) as exc:
        print(f"repro-proxy cassette diff: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print_json(report(rows))
    else:
        render(rows, Console())
    return 1 if any(row.status != "identical" for row in rows) else 0


def compare(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[Compared]:
    """One row per request asked in either cassette, changes first."""
    before, after = _latest(old), _latest(new)
    rows = []
    for asked in sorted(before.keys() | after.keys()):
        was, now = before.get(asked), after.get(asked)
        record = now or was
        assert record is not None
        distance = None
        if was is not None and now is not None:
            distance = answers.distance(_said(was), _said(now), bounded_distance)
            status = "identical" if distance == 0 else "changed"
        else:
            status = "only_new" if was is None else "only_old"
        rows.append(
            Compared(
                status,
                str(record["route"]),
                str(record["model"]),
                str(record["namespace"]),
                _prompt(record),
                distance,
                _side(was),
                _side(now),
            )
        )
    return sorted(rows, key=lambda row: STATUSES.index(row.status))


def _latest(records: list[dict[str, Any]]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Per request, its latest recording (a cassette may hold one per fingerprint)."""
    found: dict[tuple[str, ...], dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: float(r["stored_at"])):
        found[cassette_write.identity(record)] = record
    return found


def _said(record: dict[str, Any]) -> str:
    if "body_base64" in record:
        body = base64.b64decode(record["body_base64"])
    else:
        body = str(record["body"]).encode()
    if reads.is_read(str(record["route"])):
        return reads.said(body)
    return answers.text(body, bool(record.get("stream")), str(record.get("content_type", "")))


def _prompt(record: dict[str, Any]) -> str:
    if reads.is_read(str(record["route"])):  # a read asks by its query alone
        return _preview(str(record["query"]))
    request = record.get("request")
    if not isinstance(request, dict):
        return ""
    asked: Any = request.get("messages") or request.get("input") or request.get("prompt") or ""
    if isinstance(asked, list) and asked:
        asked = asked[-1].get("content", "") if isinstance(asked[-1], dict) else asked[-1]
    return _preview(asked if isinstance(asked, str) else orjson.dumps(asked).decode())


def _preview(text: str) -> str:
    return text if len(text) <= PREVIEW else text[: PREVIEW - 1] + "…"


def _side(record: dict[str, Any] | None) -> Side | None:
    if record is None:
        return None
    return Side(str(record["fingerprint"]), str(record.get("recorded_at", record["stored_at"])))


def report(rows: list[Compared]) -> dict[str, Any]:
    summary = {status: sum(row.status == status for row in rows) for status in STATUSES}
    return {"summary": summary, "requests": [asdict(row) for row in rows]}


def render(rows: list[Compared], console: Console) -> None:
    table = Table(title="cassette diff")
    for column in ("status", "route", "model", "prompt", "distance", "fingerprint"):
        table.add_column(
            column,
            justify="right" if column == "distance" else "left",
            no_wrap=column in ("status", "route"),
            # a CI log is 80 columns wide: the status is what a reader looks for, never cut
            min_width=max(map(len, STATUSES)) if column == "status" else None,
        )
    for row in rows:
        distance = "" if row.distance is None else f"{row.distance:.3f}"
        was = row.old.fingerprint if row.old else "-"
        now = row.new.fingerprint if row.new else "-"
        fingerprint = was if was == now else f"{was} -> {now}"
        style = "dim" if row.status == "identical" else None
        cells = (row.status, row.route, row.model, row.prompt, distance, fingerprint)
        table.add_row(*(Text(shown(cell)) for cell in cells), style=style)  # never as markup
    console.print(table)
    summary = report(rows)["summary"]
    console.print(", ".join(f"{count} {status}" for status, count in summary.items()))
