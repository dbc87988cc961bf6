"""The README's settings table, rendered from the settings themselves (`proxy.options.OPTIONS`).

The README holds the rendered table between two marker comments; `tests/ops/test_docs.py` fails when
it differs from the rendering. After changing a setting, rewrite it with

    python3 -m tests.settings_table
"""

from __future__ import annotations

import sys
from pathlib import Path

from proxy.options import OPTIONS, Option

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN = "<!-- settings: generated from proxy/options.py by `python3 -m tests.settings_table` -->"
END = "<!-- end of settings -->"
HEADER = "| flag | env | default | meaning |\n|---|---|---|---|\n"


def cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|")


def row(option: Option) -> str:
    default = f"`{option.default}`" if option.default else "unset"
    return f"| `{option.flag}` | `{option.env}` | {default} | {cell(option.help)} |\n"


def render() -> str:
    return HEADER + "".join(row(option) for option in OPTIONS)


def embedded(text: str) -> str:
    """The part of `text` between the markers, without them."""
    start = text.index(BEGIN) + len(BEGIN) + 1
    return text[start : text.index(END, start)]


def rewritten(text: str) -> str:
    start = text.index(BEGIN) + len(BEGIN) + 1
    return text[:start] + render() + text[text.index(END, start) :]


def main() -> int:
    text = README.read_text(encoding="utf-8")
    README.write_text(rewritten(text), encoding="utf-8")
    print(f"{README}: {len(OPTIONS)} settings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
