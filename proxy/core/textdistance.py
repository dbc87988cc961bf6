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

from rapidfuzz.distance import Levenshtein

T = TypeVar("T")


def normalized_levenshtein(a: str, b: str) -> float:
    """Edit distance (insertions, deletions, substitutions) over the longer length: 0 for equal
    strings, 1 for nothing in common. rapidfuzz's C implementation.

    Normalizing makes answers of different lengths comparable, and the mean over pairs readable
    as "the share of characters that change between two answers".
    """
    return float(Levenshtein.normalized_distance(a, b))


MAX_COMPARED = 16_384
MAX_EDITS = 1_024
"""Edit distance costs the product of the two lengths, or of the longer and a bound on the
edits: a comparison of hostile answers (an upstream's, a cassette's) must end, whatever they
are (see bounded_distance)."""


def bounded_distance(was: str, now: str) -> float:
    """The normalized edit distance (0 only for equal texts), at a bounded cost: exact for
    answers of up to MAX_COMPARED characters, or up to MAX_EDITS edits apart; beyond both, an
    upper bound (the edits between their first MAX_COMPARED characters, and every character
    after them counted as changed)."""
    longest = max(len(was), len(now))
    if longest <= MAX_COMPARED:
        return float(Levenshtein.normalized_distance(was, now))
    edits = Levenshtein.distance(was, now, score_cutoff=MAX_EDITS)
    if edits > MAX_EDITS:
        start = Levenshtein.distance(was[:MAX_COMPARED], now[:MAX_COMPARED])
        edits = max(MAX_EDITS + 1, start + longest - MAX_COMPARED)
    return min(1.0, edits / longest)


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
