"""`repro-proxy rotations` on a terminal: one table of rotations, then a few changed answers.

Answers are the upstream's text: printed as plain text (`markup=False`, `Text`), never as rich
markup, so an answer cannot restyle or hide the report.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def render(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"Fingerprint rotations ({report['distance_kind']} distance)")
    for column in ("model", "when", "change", "from", "to", "requests", "identical", "mean", "p90"):
        table.add_column(column, justify="right" if column in _NUMBERS else "left")
    examples = []
    for model, state in report["models"].items():
        for rotation in state["rotations"]:
            distance = rotation["distance"]
            table.add_row(
                *(Text(str(cell)) for cell in (model, rotation["at"], rotation["change"])),
                Text(rotation["from"]),
                Text(rotation["to"]),
                str(rotation["requests"]),
                str(rotation["identical"]),
                _number(distance["mean"]),
                _number(distance["p90"]),
            )
            examples += [(model, rotation, example) for example in rotation["examples"]]
    console.print(table)
    for model, rotation, example in examples:
        console.print(
            Text(f"{model} {rotation['from']} -> {rotation['to']}, key {example['key'][:16]}…, "
                 f"distance {example['distance']:.3f}", style="bold")
        )  # fmt: skip
        console.print(Text("  old: " + example["old"]))
        console.print(Text("  new: " + example["new"]))
    if not report["complete"]:
        console.print(f"partial: stopped after {report['scanned']} stored answers", markup=False)


_NUMBERS = frozenset({"requests", "identical", "mean", "p90"})


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
