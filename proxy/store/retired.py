"""Answers the upstream deleted while a cassette was recorded: written to the cassette all the same.

A test that cleans up after itself (it deletes the stored response or chat completion it made)
still asked for the answer it got, and its replay asks for it again: the recording must hold
it. The proxy forgets such an answer as soon as the upstream deleted it (a HIT must not hand out
a deleted id), so a process recording a cassette keeps the stored values aside here, for the
cassette written when it stops. An answer stored again under the same key (the same request
made after the deletion) takes their place there, as it does in the store. Bounded in bytes: a
value past the bound is left out of the cassette, and a warning says so.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping

log = logging.getLogger("proxy.store")

RETIRED_BYTES = 256 * 1024 * 1024
"""Bytes of deleted answers one recording keeps at most, as much as the memory store's default."""


class Retired:
    """The stored values of answers deleted during a recording, by key and fingerprint."""

    def __init__(self, max_bytes: int = RETIRED_BYTES) -> None:
        self._kept: dict[str, dict[str, bytes]] = {}
        self._bytes = 0
        self.max_bytes = max_bytes
        self.left_out = 0

    def keep(self, key: str, values: Mapping[str, bytes]) -> None:
        """Keep what `key` held before its deletion (each fingerprint's value)."""
        size = len(key) + sum(len(value) for value in values.values())
        previous = self._kept.pop(key, None)
        if previous is not None:
            self._bytes -= len(key) + sum(map(len, previous.values()))
        if self._bytes + size > self.max_bytes:
            self.left_out += 1
            log.warning(
                "deleted answer left out of the cassette: the recording keeps at most "
                f"{self.max_bytes} bytes of them",
                extra={"key": key},
            )
            return
        self._kept[key] = dict(values)
        self._bytes += size

    def entries(self, held: Collection[str]) -> Iterator[tuple[str, str, bytes]]:
        """(key, fingerprint, value) of what was kept, but for keys in `held`: the store holds a
        newer answer to those."""
        for key, values in self._kept.items():
            if key not in held:
                for fingerprint, value in values.items():
                    yield key, fingerprint, value
