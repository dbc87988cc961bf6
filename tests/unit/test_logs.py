"""Log lines below debug never carry what a client sent through text the proxy did not write."""

from __future__ import annotations

import logging
import sys

import orjson

from proxy.logs import JsonFormatter


def record(
    name: str, msg: str, *args: object, failing: Exception | None = None
) -> logging.LogRecord:
    exc_info = None
    if failing is not None:
        try:
            raise failing
        except Exception:
            exc_info = sys.exc_info()
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, exc_info)


def formatted(formatter: JsonFormatter, entry: logging.LogRecord) -> dict[str, str]:
    return dict(orjson.loads(formatter.format(entry)))


def test_exception_messages_are_withheld_but_their_type_and_traceback_kept() -> None:
    line = formatted(
        JsonFormatter(), record("proxy.server.app", "boom", failing=ValueError("sk-secret"))
    )
    assert "sk-secret" not in line["exc"]
    assert line["exc"].endswith("builtins.ValueError (message withheld)")
    assert "test_logs.py" in line["exc"]


def test_a_chained_exception_keeps_its_cause_without_either_message() -> None:
    first, second = "sk-first", "sk-second"  # not in the source lines a traceback quotes
    try:
        try:
            raise KeyError(first)
        except KeyError as exc:
            raise RuntimeError(second) from exc
    except RuntimeError as exc:
        entry = record("proxy.server.app", "boom", failing=exc)
    line = formatted(JsonFormatter(), entry)
    assert "sk-" not in line["exc"]
    assert "builtins.KeyError" in line["exc"] and "builtins.RuntimeError" in line["exc"]


def test_quoted_literals_of_a_library_message_are_withheld_and_its_own_words_kept() -> None:
    entry = record("aiohttp.server", "Bad header %r from %s", b"Bearer sk-secret", "127.0.0.1")
    assert formatted(JsonFormatter(), entry)["msg"] == "Bad header … from 127.0.0.1"


def test_a_library_message_keeps_its_first_line_only() -> None:
    entry = record("asyncio", "Exception in callback\nhandle: <Handle data=sk-secret>")
    assert formatted(JsonFormatter(), entry)["msg"] == "Exception in callback"


def test_our_own_messages_and_debug_logging_are_shown_whole() -> None:
    own = record("proxy.server.app", "key check for %s", "'quoted'")
    assert formatted(JsonFormatter(), own)["msg"] == "key check for 'quoted'"
    revealing = JsonFormatter(reveal=True)
    line = formatted(revealing, record("aiohttp.server", "%r", "sk-x", failing=ValueError("sk-y")))
    assert line["msg"] == "'sk-x'" and "ValueError: sk-y" in line["exc"]


def test_a_field_a_client_chose_reaches_the_line_without_control_or_format_characters() -> None:
    """A model name, a path: JSON escapes C0 controls, but a C1 CSI (U+009B) or a bidi
    override (U+202E) would pass raw to the terminal that shows the log."""
    entry = record("proxy.cache", "cache miss")
    entry.model = "gpt\u202e\u009b2J\x1b]0;owned\x07"
    entry.count = 3
    line = JsonFormatter().format(entry)
    assert all(char.isprintable() for char in line)
    assert orjson.loads(line)["model"] == "gpt\\u202e\\x9b2J\\x1b]0;owned\\x07"
    assert orjson.loads(line)["count"] == 3


def test_a_field_as_long_as_a_request_body_is_cut_and_says_by_how_much() -> None:
    entry = record("proxy.fingerprints", "fingerprint rotated")
    entry.model = "\u202e" + "x" * 50_000
    line = formatted(JsonFormatter(reveal=True), entry)
    assert line["model"] == "\\u202e" + "x" * 1023 + "…(48977 more characters)"
