"""A small least-recently-used memo bounded by count and by bytes (pure, no I/O).

The hot path remembers the results of pure functions (a request's prepared call, a stored
blob's decoded entry, an API key's HMAC) so that repeated requests skip the work. Each memo must
stay bounded whatever the traffic, so it forgets its oldest items past either limit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    def __init__(self, max_items: int, max_bytes: int = 0) -> None:
        """`max_bytes` 0 bounds by count alone; an item larger than the budget is not kept
        (and replaces nothing: its key is forgotten)."""
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._max_items = max_items
        self.max_bytes = max_bytes
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        found = self._items.get(key)
        if found is None:
            return None
        self._items.move_to_end(key)
        return found[0]

    def pop(self, key: K) -> V | None:
        """Forget `key`; what it held, or None."""
        found = self._items.pop(key, None)
        if found is None:
            return None
        self.bytes -= found[1]
        return found[0]

    def put(self, key: K, value: V, size: int = 0) -> None:
        previous = self._items.pop(key, None)
        if previous is not None:
            self.bytes -= previous[1]
        if self.max_bytes and size > self.max_bytes:
            return
        self._items[key] = (value, size)
        self.bytes += size
        while len(self._items) > self._max_items or self._over_budget():
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped

    def _over_budget(self) -> bool:
        return bool(self.max_bytes) and self.bytes > self.max_bytes

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
