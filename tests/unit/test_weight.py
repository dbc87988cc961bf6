"""What parsing a body costs, told without parsing it (pure)."""

from __future__ import annotations

import orjson

from proxy.core.sse import StreamRecorder
from proxy.core.weight import CONTAINERS_ON_LOOP, OFF_LOOP_BODY, containers, heavy


def test_size_or_containers_make_a_body_heavy() -> None:
    assert not heavy(orjson.dumps({"messages": [{"content": "word, " * 100_000}]}))
    assert heavy(b" " * OFF_LOOP_BODY)
    assert heavy(b"[" * (CONTAINERS_ON_LOOP + 1))
    assert not heavy(b"[{" * (CONTAINERS_ON_LOOP // 2))
    assert containers(b'{"a": [1, {"b": "[x]"}]}') == 4  # inside strings too: from above


def test_a_frame_opening_too_many_containers_spoils_the_recording() -> None:
    """Relayed, but neither parsed here nor stored."""
    deep = b"[" * 100 + b"]" * 100
    frame = b'{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "x": ['
    heavy_frame = frame + b",".join([deep] * (CONTAINERS_ON_LOOP // 100 + 1)) + b"]}"
    for body, stored in ((frame + deep + b"]}", True), (heavy_frame, False)):
        recorder = StreamRecorder(1 << 24)
        recorder.feed(b"data: " + body + b"\n\ndata: [DONE]\n\n")
        assert recorder.complete == stored
