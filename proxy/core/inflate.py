"""A body in a Content-Encoding, inflated as it arrives and read to its very end: a client's
request body, or an upstream's answer.

A compressed stream says where it ends: gzip with its trailer, deflate with its last block and
checksum. A body that stops before that point, or goes on past it, is not what its framing says,
and a reader that took the bytes inflated so far for the body would cache, or forward as whole,
a prefix of it. zlib's own signals decide, never a parse of ours: `eof` once the end is read,
`unused_data` for the bytes after it. gzip may put members one after another (RFC 1952), each
complete; deflate is one stream. Output comes in bounded pieces, so a small body never inflates
into one large allocation.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

from proxy.errors import InvalidBody

CODINGS = frozenset({"gzip", "deflate"})
"""The Content-Encodings the proxy inflates, both ways; a body in any other is not read."""

PIECE = 64 * 1024
"""Most bytes one step of inflation yields."""

MAX_MEMBERS = 1024
"""gzip members one body may hold: real clients send one; each costs a fresh decompressor."""

_GZIP = 16 + zlib.MAX_WBITS


class Inflater:
    """Inflates one body fed in the pieces it arrives in; `finish` when it has all come."""

    def __init__(
        self,
        coding: str,
        refuse: Callable[[str], Exception] = InvalidBody,
        subject: str = "The request body",
    ) -> None:
        """`refuse` builds the error for a body that breaks its coding, whose message opens
        with `subject`: a client's body is a 400, an upstream's answer a 502."""
        self._refuse = refuse
        self._subject = subject
        self._gzip = coding == "gzip"
        self._stream: zlib._Decompress | None = None
        self._members = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The inflated bytes of `data`, in pieces of at most PIECE bytes."""
        while data:
            stream = self._stream or self._open(data)
            try:
                yield from _drain(stream, data)
            except zlib.error:
                raise self._refuse(
                    f"{self._subject} is not the gzip or deflate its Content-Encoding names."
                ) from None
            if not stream.eof:
                return
            data, self._stream = stream.unused_data, None

    def finish(self) -> None:
        """The body has ended: it must end where its compressed stream does."""
        if self._stream is not None:
            raise self._refuse(
                f"{self._subject} ends before its compressed stream does: it was cut short."
            )

    def _open(self, data: bytes) -> zlib._Decompress:
        """A decompressor for the stream (or gzip member) `data` starts."""
        if self._members and not self._gzip:
            raise self._refuse(f"{self._subject} goes on past the end of its deflate stream.")
        self._members += 1
        if self._members > MAX_MEMBERS:
            raise self._refuse(f"{self._subject} holds more than {MAX_MEMBERS} gzip members.")
        if self._gzip:
            wbits = _GZIP
        elif data[0] & 0x0F == 8:  # a zlib header (RFC 1950), as "deflate" means
            wbits = zlib.MAX_WBITS
        else:  # raw deflate, as some clients send under that name
            wbits = -zlib.MAX_WBITS
        self._stream = zlib.decompressobj(wbits)
        return self._stream


def _drain(stream: zlib._Decompress, data: bytes) -> Iterator[bytes]:
    """Everything `stream` inflates from `data`, a bounded piece at a time, until it has taken
    all of `data` or reached its end (the rest then in `unused_data`)."""
    while True:
        piece = stream.decompress(data, PIECE)
        if piece:
            yield piece
        data = stream.unconsumed_tail
        if stream.eof or (not data and len(piece) < PIECE):
            return
