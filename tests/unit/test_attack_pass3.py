"""Attack pass 3, pure: values a hostile upstream or cassette nests deeper than orjson writes."""

from __future__ import annotations

import orjson

from proxy.core.entry import Entry
from proxy.store import cassette

DEPTH = 300  # orjson reads up to 1024 levels, and writes at most 254
DEEP = b"[" * DEPTH + b"]" * DEPTH


def typed(payload: dict[str, object]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (str(payload["type"]).encode(), orjson.dumps(payload))


def deep_response_stream() -> bytes:
    """A streamed response whose completed object holds a value nested DEPTH levels deep."""
    response = {
        "object": "response",
        "id": "resp_deep",
        "status": "completed",
        "model": "m",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}],
        "metadata": {"x": "D"},
    }
    created = {"type": "response.created", "response": {**response, "status": "in_progress"}}
    completed = {"type": "response.completed", "response": response}
    return (typed(created) + typed(completed)).replace(b'"D"', DEEP)


def test_a_cassette_holding_a_streamed_response_too_deep_to_write_loads_without_its_index() -> None:
    """The proxy records such a stream (tests/e2e/test_e2e_attack_pass3.py) and exports it:
    loading that cassette failed whole, naming the line with orjson's 'Recursion limit'."""
    request = {"model": "m", "input": "x", "stream": True}
    entry = Entry(
        body=deep_response_stream(),
        content_type="text/event-stream",
        fingerprint="none",
        stored_at=1.0,
        model="m",
        stream=True,
        route="/v1/responses",
        request=orjson.dumps(request),
    )
    line = orjson.dumps(cassette.to_record("k", entry))
    (loaded,) = cassette.parse([line], "shared")
    assert loaded.entry.body == entry.body and loaded.index is None
