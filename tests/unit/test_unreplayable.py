"""What the pytest plugin says of calls no cassette holds (`session.unreplayable`)."""

from __future__ import annotations

from proxy.testing.session import MAX_LISTED, unreplayable


def test_each_call_is_named_once_and_a_long_list_is_cut() -> None:
    calls = ["GET /v1/models"] * 3 + [f"POST /v1/thing{n}" for n in range(MAX_LISTED + 2)]
    said = unreplayable(calls, False, "none")
    assert said.count("GET /v1/models") == 1
    assert f"thing{MAX_LISTED - 2}" in said and f"thing{MAX_LISTED - 1}" not in said
    assert "and 3 more" in said and "--llm-record-mode=none" in said


def test_recording_is_told_the_replay_will_fail() -> None:
    said = unreplayable(["POST /v1/audio/transcriptions"], True, "once")
    assert said.startswith("repro-proxy: POST /v1/audio/transcriptions went to the upstream")
    assert "will fail" in said and "mock that call" in said
