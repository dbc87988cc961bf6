"""Answers and their tally (pure): each response reduced to what the audit compares and counts."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.core.textdistance import bounded_distance, mean_pairwise
from proxy.tools.audit.plan import Arm, Plan

MAX_KEPT = 65_536
"""Characters of an answer's text the audit keeps: it holds every answer until the report, and
N answers of tens of MiB each (an upstream's to choose, within the read bound) would hold N
times that. Longer texts are compared and reported by their start, their length and a hash of
the whole, so two answers that differ only past the start still count as distinct."""

MAX_NAME = 256
"""Characters kept of an upstream's name for something (a fingerprint, an error code)."""


def kept(text: str, limit: int = MAX_KEPT) -> str:
    """`text`, or its first `limit` characters and what identifies the rest."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[:limit]}... [{len(text) - limit} more characters, sha256 {digest}]"


@dataclass(frozen=True, slots=True)
class Answer:
    """One successful completion, reduced to what the audit compares and counts."""

    text: str
    fingerprint: str
    prompt_tokens: int
    completion_tokens: int
    seed_injected: bool


@dataclass(frozen=True, slots=True)
class Failure:
    """One request that gave no answer; `reason` groups failures in the report."""

    reason: str


Outcome = Answer | Failure


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def error_reason(status: int, body: bytes) -> str:
    """`HTTP 429 rate_limit_exceeded`: the status, and OpenAI's error code when there is one."""
    try:
        error = orjson.loads(body).get("error")
        code = error.get("code") or error.get("type")
    except (orjson.JSONDecodeError, AttributeError):
        code = None
    return f"HTTP {status} {kept(code, MAX_NAME)}" if isinstance(code, str) else f"HTTP {status}"


def _answer_text(choice: Mapping[str, Any]) -> str:
    """The message content; a tool call or refusal is compared as its JSON instead."""
    message = choice.get("message")
    if not isinstance(message, dict):
        raise TypeError("choice without a message")
    content = message.get("content")
    return content if isinstance(content, str) else orjson.dumps(message).decode()


def parse_answer(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    """A chat completion response to an Answer, or a Failure saying what went wrong."""
    if status >= 400:
        return Failure(error_reason(status, body))
    try:
        data = orjson.loads(body)
        text = _answer_text(data["choices"][0])
        usage = data.get("usage") or {}
        if not isinstance(usage, dict):
            raise TypeError("usage is not an object")
        fingerprint = data.get("system_fingerprint")
        if isinstance(fingerprint, list | dict):  # str() of it would recurse without bound
            raise TypeError("system_fingerprint is not a scalar")
    except (orjson.JSONDecodeError, TypeError, KeyError, IndexError, AttributeError):
        return Failure("malformed answer")
    return Answer(
        text=kept(text),
        fingerprint="none" if fingerprint is None else kept(str(fingerprint), MAX_NAME),
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
        seed_injected=headers.get("x-repro-seed-source") == "default",
    )


@dataclass(frozen=True, slots=True)
class Tally:
    """What one arm's answers add up to."""

    answers: Counter[str]
    fingerprints: Counter[str]
    errors: Counter[str]
    prompt_tokens: int
    completion_tokens: int
    seed_injected: int

    @property
    def ok(self) -> int:
        return self.answers.total()

    @property
    def failed(self) -> int:
        return self.errors.total()

    @property
    def agreement(self) -> float | None:
        """Share of answers equal to the most common one: 1.0 is fully reproducible."""
        if not self.answers:
            return None
        return self.answers.most_common(1)[0][1] / self.ok


def tally(outcomes: Iterable[Outcome]) -> Tally:
    outcomes = list(outcomes)
    answers = [o for o in outcomes if isinstance(o, Answer)]
    failures = [o for o in outcomes if isinstance(o, Failure)]
    return Tally(
        answers=Counter(a.text for a in answers),
        fingerprints=Counter(a.fingerprint for a in answers),
        errors=Counter(f.reason for f in failures),
        prompt_tokens=sum(a.prompt_tokens for a in answers),
        completion_tokens=sum(a.completion_tokens for a in answers),
        seed_injected=sum(a.seed_injected for a in answers),
    )


@dataclass(frozen=True, slots=True)
class ArmReport:
    """One arm's tally, with the mean distance or the reason it could not be measured."""

    arm: Arm
    tally: Tally
    mean_distance: float | None
    distance_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        t = self.tally
        answers = [{"text": text, "count": count} for text, count in t.answers.most_common()]
        return {
            "seed": self.arm.seed,
            "temperature": self.arm.temperature,
            "requests": t.ok + t.failed,
            "ok": t.ok,
            "failed": t.failed,
            "errors": dict(t.errors.most_common()),
            "distinct": len(t.answers),
            "agreement": t.agreement,
            "mean_distance": self.mean_distance,
            "distance_error": self.distance_error,
            "fingerprints": dict(t.fingerprints.most_common()),
            "prompt_tokens": t.prompt_tokens,
            "completion_tokens": t.completion_tokens,
            "seed_injected": t.seed_injected,
            "answers": answers,
        }


@dataclass(frozen=True, slots=True)
class Report:
    plan: Plan
    arms: tuple[ArmReport, ...]

    @property
    def exit_code(self) -> int:
        """1 when an arm has no answer at all or its distance failed: the audit measured nothing."""
        broken = any(r.tally.ok == 0 or r.distance_error for r in self.arms)
        return 1 if broken else 0

    def to_json(self) -> dict[str, Any]:
        p = self.plan
        return {
            "base_url": p.shown_url,
            "model": p.model,
            "requests_per_arm": p.n,
            "max_tokens": p.max_tokens,
            "distance": p.distance,
            "embedding_model": p.embedding_model if p.distance == "embedding" else None,
            "arms": {r.arm.name: r.to_json() for r in self.arms},
        }


def text_distance(counts: Mapping[str, int]) -> float | None:
    return mean_pairwise(counts, bounded_distance)
