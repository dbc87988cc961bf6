"""The server-sent-event wire format, read as the SSE specification and the official SDK read
it: a line ends with CRLF, LF or CR alone, a field's value loses one leading space, an event is
dispatched at a blank line. Only the reading of lines and fields is here; what the events of a
stream say, and whether it is an answer, is `proxy.core.sse`'s."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

# Two line ends in a row, a blank line, whatever ends each (CRLF, LF or CR): a CRLF's LF
# followed by anything, or a CR followed by a CR.
_ENDS = (b"\n\n", b"\r\r", b"\n\r")
_LINE_END = re.compile(rb"\r\n?|\n")
_SPLIT_AT_ONCE = 256 * 1024


def value(field: bytes) -> bytes:
    """A field's value as the SSE specification reads it: one leading space dropped."""
    return field[1:] if field.startswith(b" ") else field


def _past(data: bytes, at: int) -> int:
    """Just past the blank line whose two line ends start at `at` (and the LF of a CRLF)."""
    end = at + 2
    return end + 1 if data[end - 1] == 13 and data[end : end + 1] == b"\n" else end


def last_end(data: bytes) -> int:
    """Just past the last blank line of `data`, -1 if it has none."""
    return max((_past(data, at) for sep in _ENDS if (at := data.rfind(sep)) >= 0), default=-1)


def lines(ended: bytes, at: int) -> Iterator[bytes]:
    """The lines of `ended` from `at`: all at once from a region of up to a read's size (the
    faster way), one at a time from a longer one, whose lines as objects could take many
    times its size."""
    if len(ended) <= _SPLIT_AT_ONCE:
        return iter(ended[at:].splitlines() if at else ended.splitlines())
    return (ended[start:end] for start, end in _spans(ended, at))


def _spans(ended: bytes, at: int) -> Iterator[tuple[int, int]]:
    for found in _LINE_END.finditer(ended, at):
        yield at, found.start()
        at = found.end()


def past_blank(data: bytes, at: int, count: int) -> int:
    """Just past the `count`th blank line of `data` from `at` (it has that many), its lines
    as `lines` reads them."""
    for found in _LINE_END.finditer(data, at):
        if found.start() == at:
            count -= 1
            if not count:
                break
        at = found.end()
    return found.end()


def is_text(line: bytes) -> bool:
    try:
        line.decode()
    except UnicodeDecodeError:
        return False
    return True


def payloads(stream: bytes) -> Iterator[bytes]:
    """The data of each event of a whole stream, in order, its lines read as the recorder
    (`proxy.core.sse`) reads them."""
    data: list[bytes] = []
    for line in itertools.chain(lines(stream, 0), [b""]):
        if not line:
            if data:
                yield b"\n".join(data)
            data = []
        else:
            name, _, field = line.partition(b":")
            if name == b"data":
                data.append(value(field))
