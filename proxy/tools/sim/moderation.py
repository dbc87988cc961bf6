"""The simulator's moderations (`POST /v1/moderations`): a verdict fixed by the input alone.

A category is flagged when the input names it (the word `violence` flags `violence`), so tests
can ask for a flagged verdict and a clean one; scores come from a hash of the input, as a model
takes no seed. Like OpenAI's: a string or an array of strings gets one result each, an array of
parts (text and images) one result for them all; a `-latest` model answers with its dated name.
"""

from __future__ import annotations

import hashlib
import random
import secrets

import orjson

from proxy.tools.sim.state import JSON, BadRequest, SimState

CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
SNAPSHOTS = {
    "omni-moderation-latest": "omni-moderation-2024-09-26",
    "text-moderation-latest": "text-moderation-007",
}
MAX_INPUTS = 32  # OpenAI's own limit of strings per moderation request


def moderation_reply(body: JSON, state: SimState) -> JSON:
    model = body.get("model", "omni-moderation-latest")
    if not isinstance(model, str):
        raise BadRequest("model must be a string", "model")
    results = [_verdict(item) for item in _inputs(body.get("input"))]
    answered = SNAPSHOTS.get(model, model)
    return {"id": "modr-" + secrets.token_hex(12), "model": answered, "results": results}


def _inputs(value: object) -> list[str | list[JSON]]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        if len(value) > MAX_INPUTS:
            raise BadRequest(f"input must hold at most {MAX_INPUTS} strings", "input")
        return value
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return [value]  # the parts of one multimodal input
    raise BadRequest("input must be a string, an array of strings or an array of parts", "input")


def _verdict(item: str | list[JSON]) -> JSON:
    text = item if isinstance(item, str) else orjson.dumps(item).decode()
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    words = text.lower()
    flags = {name: name.partition("/")[0] in words for name in CATEGORIES}
    scores = {
        name: round(0.9 + 0.09 * rng.random() if flags[name] else 1e-3 * rng.random(), 6)
        for name in CATEGORIES
    }
    parts = [item] if isinstance(item, str) else item
    kinds = sorted(
        {"text" if isinstance(p, str) or p.get("type") == "text" else "image" for p in parts}
    )
    return {
        "flagged": any(flags.values()),
        "categories": flags,
        "category_scores": scores,
        "category_applied_input_types": {name: kinds for name in CATEGORIES},
    }
