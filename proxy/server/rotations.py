"""`GET /admin/rotations`: each model's fingerprint rotations, and how the answers of the same
requests changed across each one.

The answers come from the store's own batched reads (`Store.entries`: SCAN on Redis, never a
blocking KEYS), one pass for all models: at most `MAX_SCANNED` stored answers read, of which
`MAX_ENTRIES` (and `MAX_HELD_CHARS` characters) held for comparison, each clipped to
`comparison.TEXT_LIMIT`. A store of millions of keys or an upstream of huge answers makes a
partial report (`complete` false), never an unbounded one.
The edit distances run in the offload child when there is much to compare.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from proxy.core import answers as said
from proxy.core import routes
from proxy.core.comparison import Pair, clipped, summary, text_distances
from proxy.core.entry import CorruptEntry
from proxy.core.fingerprints import ModelFingerprints, Rotation
from proxy.errors import InvalidParameter
from proxy.server.admin import check_admin, json_response, rfc3339, store_answers
from proxy.server.context import SERVICES, Services
from proxy.store.base import Selector

MAX_SCANNED = 200_000
MAX_ENTRIES = 20_000
MAX_HELD_CHARS = 32 * 1024 * 1024
EXAMPLE_CHARS = 2_000
MAX_EXAMPLES = 10
MAX_PAIRS = 256
INLINE_CHARS = 1_000_000
"""Below this many characters to compare, the distances run on the loop (a few milliseconds)."""


@dataclass(slots=True)
class Budget:
    """What one report may still read: stored answers scanned, answers held, their text."""

    scanned: int = 0
    entries: int = 0
    chars: int = 0
    exhausted: bool = False

    def read(self) -> bool:
        if self.scanned >= MAX_SCANNED:
            self.exhausted = True
            return False
        self.scanned += 1
        return True

    def take(self, text: str) -> bool:
        if self.entries >= MAX_ENTRIES or self.chars + len(text) > MAX_HELD_CHARS:
            self.exhausted = True
            return False
        self.entries += 1
        self.chars += len(text)
        return True


@dataclass(frozen=True, slots=True)
class Asked:
    model: str | None
    examples: int
    pairs: int


async def admin_rotations(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    await check_admin(request, services, page=True)
    asked = Asked(
        request.query.get("model"),
        _count(request, "examples", 3, MAX_EXAMPLES),
        _count(request, "pairs", 0, MAX_PAIRS),
    )
    with store_answers():
        body = await rotations_report(services, asked)
    return json_response(body)


def _count(request: web.Request, name: str, default: int, most: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) > most:
        raise InvalidParameter(f"'{name}' must be an integer from 0 to {most}.", name)
    return int(raw)


async def rotations_report(services: Services, asked: Asked) -> dict[str, Any]:
    """One pass over the store for every model asked for, however many there are."""
    states = await services.store.all_fingerprints()
    chosen = {m: s for m, s in sorted(states.items()) if _asked_for(asked.model, m)}
    history = {model: await services.store.rotations(model) for model in chosen}
    budget = Budget()
    answers = await _answers(services, asked.model, history, budget)
    models = {
        lineage: await _model_report(
            services, lineage, state, history[lineage], answers.get(lineage, {}), asked
        )
        for lineage, state in chosen.items()
    }
    return {"models": models, "scanned": budget.scanned, "complete": not budget.exhausted}


def _asked_for(model: str | None, lineage: str) -> bool:
    """Every lineage of the model asked for (its fleets', its route's), or the lineage named:
    a user filtering by model expects each history its answers keep."""
    return model is None or model in (lineage, routes.model_of(lineage))


async def _model_report(
    services: Services,
    lineage: str,
    state: ModelFingerprints,
    rotations: Sequence[Rotation],
    answers: dict[str, dict[str, str]],
    asked: Asked,
) -> dict[str, Any]:
    compared: dict[frozenset[str], tuple[str, list[Pair], list[float]]] = {}
    report = []
    for rotation in rotations:
        both = frozenset((rotation.old, rotation.new))
        if both not in compared:  # an alternating model repeats its pairs: measured once
            pairs = _pairs(answers, rotation.old, rotation.new)
            compared[both] = (rotation.old, pairs, await _distances(services, pairs))
        first_old, pairs, distances = compared[both]
        if first_old != rotation.old:  # the same two fingerprints, the other way round
            pairs = [Pair(pair.key, pair.new, pair.old) for pair in pairs]
        report.append(_rotation(rotation, pairs, distances, asked))
    return {"model": routes.model_of(lineage), "current": state.current, "rotations": report}


async def _answers(
    services: Services,
    model: str | None,
    history: Mapping[str, Sequence[Rotation]],
    budget: Budget,
) -> dict[str, dict[str, dict[str, str]]]:
    """The text of every stored answer of a rotation's fingerprints: by model, key, fingerprint."""
    wanted = {m: {r.old for r in rs} | {r.new for r in rs} for m, rs in history.items() if rs}
    if not wanted:
        return {}
    any_wanted = set().union(*wanted.values())
    found: dict[str, dict[str, dict[str, str]]] = {}
    selected = None if model is None else routes.model_of(model)
    async for key, fingerprint, value in services.store.entries(Selector(model=selected)):
        if not budget.read():
            break
        if budget.scanned % 256 == 0:
            await asyncio.sleep(0)  # a memory store's scan must not hold the loop
        if fingerprint not in any_wanted:
            continue
        try:
            entry = services.codec.unpack(value)
        except CorruptEntry:
            continue
        # What taught its fingerprint:
        lineage = routes.lineage_of(entry.model, entry.route, entry.vary, entry.query)
        if fingerprint not in wanted.get(lineage, ()):
            continue
        text = clipped(said.text(entry.body, entry.stream, entry.content_type))
        if not budget.take(text):
            break
        found.setdefault(lineage, {}).setdefault(key, {})[fingerprint] = text
    return found


def _pairs(answers: dict[str, dict[str, str]], old: str, new: str) -> list[Pair]:
    return [
        Pair(key, texts[old], texts[new])
        for key, texts in sorted(answers.items())
        if old in texts and new in texts
    ]


async def _distances(services: Services, pairs: list[Pair]) -> list[float]:
    texts = [(pair.old, pair.new) for pair in pairs]
    if sum(len(old) + len(new) for old, new in texts) <= INLINE_CHARS:
        return text_distances(texts)
    return await services.offload.run(text_distances, texts, wait=True)


def _rotation(
    rotation: Rotation, pairs: list[Pair], distances: list[float], asked: Asked
) -> dict[str, Any]:
    stats = summary(distances)
    ranked = sorted(zip(pairs, distances, strict=True), key=lambda item: -item[1])
    changed = [(pair, distance) for pair, distance in ranked if distance > 0]
    return {
        "from": rotation.old,
        "to": rotation.new,
        "at": rfc3339(rotation.at),
        "change": "rotated back" if rotation.back else "rotated",
        "requests": stats.pop("requests"),
        "identical": stats.pop("identical"),
        "distance": stats,
        "examples": [_example(pair, distance) for pair, distance in changed[: asked.examples]],
        "pairs": [_example(pair, distance) for pair, distance in ranked[: asked.pairs]],
    }


def _example(pair: Pair, distance: float) -> dict[str, Any]:
    return {
        "key": pair.key,
        "distance": round(distance, 4),
        "old": pair.old[:EXAMPLE_CHARS],
        "new": pair.new[:EXAMPLE_CHARS],
    }
