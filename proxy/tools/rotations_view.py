"""`repro-proxy rotations` on a terminal: one table of rotations, then a few changed answers.

Everything in the report is the server's text, answers the upstream's: each cell and line is
written with `literal` (never rich markup, every control character escaped), so no answer can
restyle, hide or rewrite the report.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from proxy.tools.output import literal, plain


def render(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    table = Table(title=literal(f"Fingerprint rotations ({report['distance_kind']} distance)"))
    # The lineage (`<model>@fleet-…`) folded onto more lines, never cut short: it says which
    # fleet rotated.
    table.add_column("lineage", overflow="fold")
    for column in ("when", "change", "from", "to", "requests", "identical", "mean", "p90"):
        table.add_column(column, justify="right" if column in _NUMBERS else "left")
    examples = []
    for lineage, state in report["models"].items():
        for rotation in state["rotations"]:
            distance = rotation["distance"]
            cells = (lineage, rotation["at"], rotation["change"], rotation["from"], rotation["to"])
            table.add_row(
                *(literal(cell) for cell in cells),
                literal(rotation["requests"]),
                literal(rotation["identical"]),
                literal(_number(distance["mean"])),
                literal(_number(distance["p90"])),
            )
            examples += [(lineage, rotation, example) for example in rotation["examples"]]
    console.print(table)
    for lineage, rotation, example in examples:
        heading = (
            f"{plain(lineage)} {plain(rotation['from'])} -> {plain(rotation['to'])}, "
            f"key {plain(example['key'])[:16]}…, distance {_number(example['distance'])}"
        )
        console.print(literal(heading), style="bold")
        console.print(literal("  old: " + plain(example["old"]), keep="\n"))
        console.print(literal("  new: " + plain(example["new"]), keep="\n"))
    if not report["complete"]:
        console.print(literal(f"partial: stopped after {plain(report['scanned'])} stored answers"))


_NUMBERS = frozenset({"requests", "identical", "mean", "p90"})


def _number(value: float | None) -> str:
    if value is not None and not isinstance(value, int | float):
        raise TypeError(f"a distance must be a number, not {type(value).__name__}")
    return "-" if value is None else f"{value:.3f}"
