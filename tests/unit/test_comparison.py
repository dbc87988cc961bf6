"""The summary of a rotation's before/after distances (pure)."""

from __future__ import annotations

from proxy.core.comparison import TEXT_LIMIT, clipped, summary, text_distances


def test_identical_pairs_are_at_zero_and_others_at_their_edit_distance() -> None:
    assert text_distances([("abc", "abc"), ("abcd", "abed"), ("", "xy")]) == [0.0, 0.25, 1.0]


def test_the_summary_counts_identical_pairs_and_the_distribution() -> None:
    stats = summary([0.0, 0.0, 0.25, 1.0])
    assert (stats["requests"], stats["identical"]) == (4, 2)
    assert (stats["mean"], stats["p50"], stats["p90"], stats["max"]) == (0.3125, 0.0, 1.0, 1.0)
    counts = {bucket["le"]: bucket["count"] for bucket in stats["histogram"]}
    assert counts[0.0] == 2 and counts[0.2] == 2 and counts[0.3] == 3 and counts[1.0] == 4


def test_no_pairs_no_distances() -> None:
    stats = summary([])
    assert (stats["requests"], stats["mean"], stats["p50"], stats["max"]) == (0, None, None, None)
    assert all(bucket["count"] == 0 for bucket in stats["histogram"])


def test_answers_are_clipped_before_they_are_compared() -> None:
    assert len(clipped("x" * (TEXT_LIMIT + 10))) == TEXT_LIMIT
