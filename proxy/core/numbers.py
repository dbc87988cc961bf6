"""Numbers as a setting writes them: ASCII digits only.

Python's int() and float() also take `١٢` (Arabic-Indic digits), `1_000`, `nan`, `infinity`
and thousands of digits; a port or a timeout typed that way is a mistake to refuse, not a
value to guess at. Both parsers raise ValueError with no message: the caller says what it
expected.
"""

from __future__ import annotations

import re

_INTEGER = re.compile(r"[+-]?[0-9]{1,30}", re.ASCII)
_DECIMAL = re.compile(
    r"[+-]?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][+-]?[0-9]{1,4})?", re.ASCII
)


def integer(text: str) -> int:
    """An integer written in ASCII digits, with an optional sign."""
    if _INTEGER.fullmatch(text) is None:
        raise ValueError
    return int(text)


def decimal(text: str) -> float:
    """A finite number written in ASCII digits (`1.5`, `.5`, `2e3`); never NaN or an infinity,
    and never -0.0."""
    if _DECIMAL.fullmatch(text) is None:
        raise ValueError
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError
    return value + 0.0
