"""Bytes held at once by many holders, bounded (pure).

One request's body is bounded by `--max-body` and one stream's recording by `--max-entry`,
but not how many are held at once, and a client or an upstream choosing to hold them open
chooses how many. Twenty upstream streams of 30 MiB held open took a proxy from 60 MB to
700 MB; two hundred clients each sending 16 KiB of gzip that inflates to 16 MiB, all but its
last byte, took it to 3 GB. With thousands of connections the product has no bound a machine
holds. Past its budget, a recording stops (its stream is relayed whole and not stored), as one
past `--max-entry` does; a body being read is refused with a 503 the client may retry.
"""

from __future__ import annotations

HELD_AT_ONCE = 256 * 1024 * 1024
"""The least the holders of one kind may hold together."""


def budget_for(largest: int) -> int:
    """A budget for holders each of at most `largest` bytes: HELD_AT_ONCE, or four of them."""
    return max(HELD_AT_ONCE, 4 * largest)


class Budget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Count `size` more bytes held, if the budget allows them; False (nothing counted)
        when it does not."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size
