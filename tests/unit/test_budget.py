"""Recordings in flight share one budget (pure)."""

from __future__ import annotations

from proxy.core.budget import HELD_AT_ONCE, Budget, budget_for
from proxy.core.sse import StreamRecorder

FRAME = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'


def test_the_budget_is_at_least_four_answers_as_large_as_allowed() -> None:
    assert budget_for(1 << 20) == HELD_AT_ONCE
    assert budget_for(1 << 30) == 4 << 30


def test_a_recording_past_the_shared_budget_stops_and_gives_its_bytes_back() -> None:
    budget = Budget(3 * len(FRAME))
    first = StreamRecorder(1 << 20, budget=budget)
    second = StreamRecorder(1 << 20, budget=budget)
    first.feed(FRAME + FRAME)
    second.feed(FRAME)
    assert budget.held == 3 * len(FRAME) and not first.oversize
    second.feed(FRAME)  # one frame too many, for the two together
    assert second.oversize and budget.held == 2 * len(FRAME)
    assert second.body() == b""
    first.release()
    assert budget.held == 0 and first.body() == b""
    third = StreamRecorder(1 << 20, budget=budget)
    third.feed(FRAME * 3)
    assert not third.oversize and budget.held == 3 * len(FRAME)
