"""Distances between answers for the determinism audit (pure: no I/O, no network).

`repro-proxy check` compares N answers to the same request. Identical answers are at distance 0;
how far apart the others are tells a harmless rewording from a different answer. The text distance
runs locally, so an audit costs no extra API calls; `cosine_distance` serves embedding vectors
fetched by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from itertools import combinations
from typing import TypeVar

T = TypeVar("T")


def _match_masks(pattern: str) -> dict[str, int]:
    """For each character, the bit set of its positions in `pattern`."""
    masks: dict[str, int] = {}
    for position, char in enumerate(pattern):
        masks[char] = masks.get(char, 0) | (1 << position)
    return masks


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions) between two strings.

    Myers' bit-parallel algorithm (in Hyyrö's formulation) on Python's unbounded integers: one
    column of the edit matrix is a pair of bit vectors, so the Python-level loop runs once per
    character of the longer string instead of once per cell. LLM answers of a few thousand
    characters, compared pairwise, stay fast without a C extension.
    """
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    masks, mask, top = _match_masks(b), (1 << len(b)) - 1, 1 << (len(b) - 1)
    plus, minus, score = mask, 0, len(b)  # vertical deltas of column 0 are all +1
    for char in a:
        eq = masks.get(char, 0)
        xv = eq | minus
        xh = ((((eq & plus) + plus) & mask) ^ plus) | eq
        hplus = (minus | ~(xh | plus)) & mask
        hminus = plus & xh
        score += 1 if hplus & top else -1 if hminus & top else 0
        hplus, hminus = ((hplus << 1) | 1) & mask, (hminus << 1) & mask
        plus, minus = (hminus | ~(xv | hplus)) & mask, hplus & xv
    return score


def normalized_levenshtein(a: str, b: str) -> float:
    """Edit distance over the longer length: 0 for equal strings, 1 for nothing in common.

    Normalizing makes answers of different lengths comparable, and the mean over pairs readable
    as "the share of characters that change between two answers".
    """
    longest = max(len(a), len(b))
    return levenshtein(a, b) / longest if longest else 0.0


def cosine_distance(u: Sequence[float], v: Sequence[float]) -> float:
    """1 - cosine similarity (0 = same direction, 2 = opposite), as embedding users know it."""
    if len(u) != len(v):
        raise ValueError(f"vectors differ in length: {len(u)} and {len(v)}")
    norms = math.sqrt(math.fsum(x * x for x in u)) * math.sqrt(math.fsum(y * y for y in v))
    if norms == 0:
        raise ValueError("cosine distance of a zero vector is undefined")
    similarity = math.fsum(x * y for x, y in zip(u, v, strict=True)) / norms
    return 1.0 - max(-1.0, min(1.0, similarity))


def mean_pairwise(counts: Mapping[T, int], distance: Callable[[T, T], float]) -> float | None:
    """Mean distance over all pairs of answers, given each distinct answer with its count.

    Equal answers are at distance 0, so only distinct pairs are measured, weighted by how many
    answer pairs they stand for: N answers with few distinct values cost a handful of distance
    calls (or embeddings) instead of N^2/2. None when there are fewer than two answers.
    """
    total = sum(counts.values())
    if total < 2:
        return None
    weighted = math.fsum(counts[x] * counts[y] * distance(x, y) for x, y in combinations(counts, 2))
    return weighted / (total * (total - 1) / 2)
