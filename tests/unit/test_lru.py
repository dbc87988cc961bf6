"""The hot path's memo: recency, and both bounds (count and bytes) whatever is put in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.core.lru import LRU


def test_forgets_the_least_recently_used_past_the_count() -> None:
    memo: LRU[str, int] = LRU(max_items=2)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1  # "b" is now the oldest
    memo.put("c", 3)
    assert memo.get("b") is None
    assert (memo.get("a"), memo.get("c"), len(memo)) == (1, 3, 2)


def test_forgets_oldest_items_past_the_byte_budget() -> None:
    memo: LRU[str, str] = LRU(max_items=100, max_bytes=10)
    memo.put("a", "x", 4)
    memo.put("b", "y", 4)
    memo.put("c", "z", 4)
    assert memo.get("a") is None
    assert memo.bytes == 8
    assert memo.get("b") == "y"


def test_an_item_over_the_budget_is_not_kept_and_evicts_nothing() -> None:
    memo: LRU[str, str] = LRU(max_items=100, max_bytes=10)
    memo.put("a", "x", 5)
    memo.put("big", "y", 11)
    assert memo.get("big") is None
    assert memo.get("a") == "x"
    assert memo.bytes == 5


def test_replacing_a_key_recounts_its_bytes() -> None:
    memo: LRU[str, str] = LRU(max_items=100, max_bytes=10)
    memo.put("a", "x", 6)
    memo.put("a", "y", 3)
    assert (memo.get("a"), memo.bytes, len(memo)) == ("y", 3, 1)
    memo.clear()
    assert (memo.get("a"), memo.bytes, len(memo)) == (None, 0, 0)


@given(
    st.lists(st.tuples(st.integers(0, 30), st.integers(0, 40)), max_size=200),
    st.integers(1, 10),
    st.integers(0, 60),
)
def test_bounds_hold_for_any_sequence(puts: list[tuple[int, int]], items: int, budget: int) -> None:
    memo: LRU[int, int] = LRU(max_items=items, max_bytes=budget)
    latest: dict[int, int] = {}
    for key, size in puts:
        memo.put(key, size, size)
        latest[key] = size
        assert len(memo) <= items
        assert budget == 0 or memo.bytes <= budget
        found = memo.get(key)
        assert found is None or found == latest[key]
    assert memo.bytes == sum(size for size in (memo.get(k) for k in latest) if size is not None)


def test_pop_forgets_a_key_and_its_bytes() -> None:
    memo: LRU[str, str] = LRU(max_items=100, max_bytes=10)
    memo.put("a", "x", 4)
    memo.put("b", "y", 4)
    assert memo.pop("a") == "x"
    assert memo.pop("a") is None
    assert (memo.get("a"), memo.bytes, len(memo)) == (None, 4, 1)
