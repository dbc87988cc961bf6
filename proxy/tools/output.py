"""What the operator commands print: a table on a terminal, JSON when asked or when piped.

Whatever a server, an upstream or a cassette said is hostile text: it reaches the terminal only
through `literal` (a table cell, never rich markup) or `fail` (a message), with every control and
format character written as an escape, so no answer can retitle the window, erase a line, add a
hyperlink or restyle the report. rich is imported only when a table is drawn, so scripts reading
JSON never pay for it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from proxy.core.terminal import shown

if TYPE_CHECKING:
    from rich.text import Text


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 answer`, `2 answers`, `0 answers`; a count that is no integer (from a hostile
    answer) is a TypeError, as arithmetic on it would be."""
    if not isinstance(count, int) or isinstance(count, bool):
        raise TypeError(f"a count must be an integer, not {type(count).__name__}")
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def wants_json(flag: bool) -> bool:
    """JSON with --json, and whenever stdout is not a terminal (a pipe, a file, a script)."""
    return flag or not sys.stdout.isatty()


def print_json(value: Any, indent: bool = True) -> None:
    sys.stdout.write(json_text(value, indent) + "\n")


def json_text(value: Any, indent: bool = True) -> str:
    """`value` as JSON in which every control and format character is an escape: orjson
    escapes only those below U+0020, and a hostile server's U+009B (a terminal's 8-bit CSI) or
    U+202E (a bidi override) reached the terminal as they were. A JSON reader reads the same
    value."""
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2 if indent else 0).decode()
    return _BEYOND_ASCII.sub(_escaped, text)


_BEYOND_ASCII = re.compile(r"[^\x00-\x7e]")


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char.isprintable():
        return char
    units = char.encode("utf-16-be")
    return "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))


def plain(value: object) -> str:
    """A server's scalar as text; a list or an object where text belongs is a TypeError (a
    wrong answer), never printed as Python would, which recurses without bound."""
    if isinstance(value, list | dict | tuple | set):
        raise TypeError(f"{type(value).__name__} where text belongs")
    return str(value)


def literal(value: object, keep: str = "") -> Text:
    """`value` as a table cell or a line shows it: its text, never markup, never an escape."""
    from rich.text import Text

    return Text(shown(plain(value), keep))


def fail(command: str, message: object) -> None:
    """One line on stderr, `repro-proxy COMMAND: MESSAGE`, the message shown literally."""
    print(f"repro-proxy {command}: {shown(str(message))}", file=sys.stderr)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=literal(title))
    for column in columns:
        table.add_column(literal(column))
    for row in rows:
        table.add_row(*(literal(cell) for cell in row))
    Console(highlight=False).print(table)


def size(count: int) -> str:
    """Bytes as people read them: `512 B`, `3.1 KiB`, `12.0 MiB`."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError(count)
