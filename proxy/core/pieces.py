"""Bytes kept as they arrive from a stream, without an object per few bytes.

A stream recording (`proxy.core.sse`) holds the chunks the upstream sent as they are, never a
copy; but an upstream pacing its stream a few bytes at a time would make each kept chunk cost
an object many times its size. Small pieces are therefore gathered in one buffer.
"""

from __future__ import annotations

SMALL = 256
"""Pieces shorter than this are gathered, in buffers of GATHERED bytes."""
GATHERED = 4096


class Pieces:
    """Bytes kept as the objects they came in, but for small ones, gathered in one buffer: a
    stream arriving a few bytes at a time would otherwise cost an object of tens of bytes
    per few bytes kept, many times what it holds."""

    __slots__ = ("parts", "size", "tail")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.tail = bytearray()
        self.size = 0

    def append(self, data: bytes) -> None:
        self.size += len(data)
        if len(data) >= SMALL:
            self._settle()
            self.parts.append(data)
            return
        self.tail += data
        if len(self.tail) >= GATHERED:
            self._settle()

    def _settle(self) -> None:
        if self.tail:
            self.parts.append(bytes(self.tail))
            self.tail = bytearray()

    def last_byte(self) -> bytes:
        if self.tail:
            return bytes(self.tail[-1:])
        return self.parts[-1][-1:] if self.parts else b""

    def joined(self, more: bytes = b"") -> bytes:
        return b"".join([*self.parts, self.tail, more])
