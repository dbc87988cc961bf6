"""What the operator commands print: a table on a terminal, JSON when asked or when piped.

rich is imported only when a table is drawn, so scripts reading JSON never pay for it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import orjson


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 answer`, `2 answers`, `0 answers`."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def wants_json(flag: bool) -> bool:
    """JSON with --json, and whenever stdout is not a terminal (a pipe, a file, a script)."""
    return flag or not sys.stdout.isatty()


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    Console(highlight=False).print(table)


def size(count: int) -> str:
    """Bytes as people read them: `512 B`, `3.1 KiB`, `12.0 MiB`."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError(count)
