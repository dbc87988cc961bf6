"""How the answers to the same requests changed across a fingerprint rotation (pure).

The store holds, under one key, the answers of several fingerprints side by side: each key
answered under both fingerprints of a rotation is one before/after pair. This module summarises
the distances of those pairs; reading them from the store is the server's business.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from proxy.core.answers import distance
from proxy.core.textdistance import normalized_levenshtein

DISTANCE_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
"""Upper bounds of the distance histogram: 0 is "identical", 1 "nothing in common"."""

TEXT_LIMIT = 16_384
"""Characters of an answer compared (and held while reading the store): the distance of two huge
answers is measured on their beginnings, so a hostile upstream cannot make a report unbounded."""


@dataclass(frozen=True, slots=True)
class Pair:
    """One request answered under both fingerprints: its key and the two answers' texts."""

    key: str
    old: str
    new: str


def clipped(text: str) -> str:
    return text[:TEXT_LIMIT]


def text_distances(pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Normalised edit distance of each pair (module level: it runs in the offload child); 1
    between images or sounds that differ (`answers.distance`)."""
    return [distance(old, new, normalized_levenshtein) for old, new in pairs]


def summary(distances: Sequence[float]) -> dict[str, Any]:
    """How many pairs, how many identical, and the distribution of their distances."""
    ordered = sorted(distances)
    histogram = [
        {"le": bound, "count": sum(1 for d in ordered if d <= bound)} for bound in DISTANCE_BUCKETS
    ]
    return {
        "requests": len(ordered),
        "identical": sum(1 for d in ordered if d == 0),
        "mean": round(math.fsum(ordered) / len(ordered), 4) if ordered else None,
        "p50": _quantile(ordered, 0.5),
        "p90": _quantile(ordered, 0.9),
        "max": round(ordered[-1], 4) if ordered else None,
        "histogram": histogram,
    }


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest rank: a distance some pair really has."""
    if not ordered:
        return None
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 4)
