"""Text from a cassette or a request as a terminal may print it (pure).

A cassette comes from a pull request and a request from anyone: escape sequences in them could
move the cursor, erase a row or retitle the window, and bidirectional overrides reorder what a
reviewer reads. Control and format characters are written as visible escapes instead.
"""

from __future__ import annotations

import unicodedata


def shown(text: str, keep: str = "") -> str:
    """`text` with every control and format character written as its escape (`\\x1b`,
    `\\u202e`), but the spaces and the characters in `keep` (such as a newline)."""
    if text.isprintable():
        return text
    return "".join(
        char
        if char.isprintable() or char in keep or unicodedata.category(char) == "Zs"
        else ascii(char)[1:-1]
        for char in text
    )
