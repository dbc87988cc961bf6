"""Entries written by earlier versions stay readable: the blobs in tests/unit/data were packed
by the first entry format (a length-prefixed JSON header, then the body) and are never rewritten."""

from __future__ import annotations

from pathlib import Path

import orjson

from proxy.core.entry import Entry

DATA = Path(__file__).parent / "data"


def test_a_chat_entry_of_the_first_format_decodes() -> None:
    entry = Entry.unpack((DATA / "entry_v1_chat.bin").read_bytes())
    assert entry.fingerprint == "fp_abc"
    assert entry.model == "gpt-4o-mini"
    assert entry.stored_at == 1764864000.5
    assert (entry.seed, entry.seed_source) == (12345, "default")
    assert (entry.prompt_tokens, entry.completion_tokens, entry.stream) == (31, 8, False)
    assert (entry.route, entry.query, entry.namespace) == ("/v1/chat/completions", "", "ns1")
    assert orjson.loads(entry.request)["messages"][0]["content"].endswith("a backslash \\ too.")
    assert orjson.loads(entry.body)["choices"][0]["message"]["content"].startswith("The lighth")


def test_a_streamed_entry_of_the_first_format_decodes() -> None:
    entry = Entry.unpack((DATA / "entry_v1_stream.bin").read_bytes())
    assert entry.stream is True
    assert entry.content_type == "text/event-stream; charset=utf-8"
    assert entry.query == "api-version=2024-06-01"
    assert entry.body.endswith(b"data: [DONE]\n\n")
    assert entry.body.count(b"data: ") == 4
