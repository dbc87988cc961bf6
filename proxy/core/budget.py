"""Bytes held at once by many holders, bounded (pure).

Each stream the proxy relays is recorded on the side, up to `--max-entry`, until it ends: one
stream's recording is bounded, but not how many run at once. An upstream sending 30 MiB down
each of twenty streams, then holding them open, took a proxy from 60 MB to 700 MB; with
thousands of connections the product has no bound a machine holds. A recording that would take
the process past its budget stops (its stream is relayed whole and not stored), as one past
`--max-entry` does.
"""

from __future__ import annotations

RECORDINGS_HELD = 256 * 1024 * 1024
"""The least the recordings in flight may hold together; at least four times `--max-entry`."""


def recordings_budget(max_entry: int) -> int:
    return max(RECORDINGS_HELD, 4 * max_entry)


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
