"""Structured logs: one JSON object per line, with the `extra` fields of the call.

Below debug, nothing a client sent reaches a log line through text we do not write ourselves:
libraries' messages (aiohttp echoes a malformed request line or header, credential included,
when it refuses one) have their quoted literals withheld, and every exception is logged as its
traceback and type without its message. `--log-level debug` shows them whole. Fields are
written with control and format characters escaped and bounded in length, whatever the level.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from datetime import UTC, datetime

import orjson

from proxy.core.terminal import shown

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}
OWN_LOGGERS = "proxy."
WITHHELD = "…"
# Quoted literals (a repr of str or bytes) of a library's message: where request data shows.
_QUOTED = re.compile(r"""b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*\"""")
_MAX_CHAIN = 8
MAX_FIELD = 1024


class JsonFormatter(logging.Formatter):
    def __init__(self, reveal: bool = False) -> None:
        super().__init__()
        self.reveal = reveal

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": shown(self._message(record)),
        }
        line.update({k: _printable(v) for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            exc = record.exc_info[1]
            if self.reveal or exc is None:
                line["exc"] = self.formatException(record.exc_info)
            else:
                line["exc"] = withheld(exc)
        return orjson.dumps(line, default=str).decode()

    def _message(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if self.reveal or record.name.startswith(OWN_LOGGERS):
            return message
        return _QUOTED.sub(WITHHELD, message.partition("\n")[0])


def _printable(value: object) -> object:
    """A field's text with control and format characters written as escapes: a model name or
    a path is the client's to choose, and JSON escapes only C0 controls, so a C1 CSI or a
    bidi override would reach the terminal that shows the log as it is. At most MAX_FIELD
    characters of it, and how many more there were: a model name may be as long as a request
    body, and so would every line that names it."""
    if not isinstance(value, str):
        return value
    if len(value) > MAX_FIELD:
        value = f"{value[:MAX_FIELD]}{WITHHELD}({len(value) - MAX_FIELD} more characters)"
    return shown(value)


def withheld(exc: BaseException) -> str:
    """The traceback of `exc` and of its causes, each exception named by its type only:
    messages may quote what a client sent."""
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < _MAX_CHAIN:
        name = f"{type(current).__module__}.{type(current).__qualname__}"
        frames = "".join(traceback.format_tb(current.__traceback__))
        parts.append(f"Traceback (most recent call last):\n{frames}{name} (message withheld)")
        current = current.__cause__ or current.__context__
    return "\n\nwhile handling:\n".join(reversed(parts))


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(reveal=level == "debug"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if level != "debug":
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
