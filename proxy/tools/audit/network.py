"""The audit's requests, through an injected httpx client: the 2N chats and the embeddings."""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import Callable, Mapping, Sequence

import httpx
import orjson

from proxy.core.textdistance import cosine_distance, mean_pairwise
from proxy.core.tlsreason import tls_reason
from proxy.tools.audit.plan import EMBEDDING_BATCH, Arm, Plan
from proxy.tools.audit.tally import (
    MAX_NAME,
    ArmReport,
    Failure,
    Outcome,
    Report,
    Tally,
    error_reason,
    kept,
    parse_answer,
    tally,
    text_distance,
)
from proxy.tools.remote import Unusable, exchange

NO_CACHE = {"Cache-Control": "no-cache"}


class AuditError(Exception):
    """A step the audit cannot go on without (an embeddings request) failed; says which."""


async def ask(client: httpx.AsyncClient, plan: Plan, arm: Arm) -> Outcome:
    """One chat request; transport errors, and answers the command cannot use (too large, too
    slow, in a coding it does not read), become Failures so one bad request never stops N."""
    try:
        status, headers, body = await exchange(
            client, "chat/completions", plan.body(arm), NO_CACHE, plan.timeout
        )
    except httpx.HTTPError as exc:
        tls = tls_reason(exc)
        return Failure(
            kept(f"{type(exc).__name__} (TLS: {tls})", MAX_NAME) if tls else type(exc).__name__
        )
    except Unusable as exc:
        return Failure(kept(str(exc), MAX_NAME))
    return parse_answer(status, headers, body)


async def collect(
    client: httpx.AsyncClient, plan: Plan, on_done: Callable[[Arm], None]
) -> dict[str, list[Outcome]]:
    """All 2N requests, at most `concurrency` at once, the arms interleaved.

    Interleaving spreads time-dependent upstream changes (a fingerprint rollout, load) over both
    arms alike instead of blaming them on one.
    """
    gate = asyncio.Semaphore(plan.concurrency)

    async def one(arm: Arm) -> tuple[Arm, Outcome]:
        async with gate:
            outcome = await ask(client, plan, arm)
        on_done(arm)
        return arm, outcome

    results = await asyncio.gather(*(one(arm) for _ in range(plan.n) for arm in plan.arms))
    outcomes: dict[str, list[Outcome]] = {arm.name: [] for arm in plan.arms}
    for arm, outcome in results:
        outcomes[arm.name].append(outcome)
    return outcomes


MAX_DIMENSIONS = 65_536
"""Numbers in one embedding, far above any embedding model's (thousands): an upstream's vector
of millions would cost the audit a GiB of floats to hold and seconds of arithmetic to compare."""


def _vectors(body: bytes, expected: int) -> list[Sequence[float]]:
    data = sorted(orjson.loads(body)["data"], key=lambda item: item["index"])
    if len(data) != expected:
        raise ValueError(f"{len(data)} embeddings for {expected} inputs")
    for item in data:
        if len(item["embedding"]) > MAX_DIMENSIONS:
            raise ValueError(f"an embedding of more than {MAX_DIMENSIONS} numbers")
    return [array("d", (_number(x) for x in item["embedding"])) for item in data]


def _number(value: object) -> float:
    """A vector's component: a JSON number, never a string such as "nan" or "inf"."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"an embedding holds {type(value).__name__}, not a number")
    return float(value)


async def _embed_batch(
    client: httpx.AsyncClient, model: str, batch: list[str], timeout: float
) -> list[Sequence[float]]:
    try:
        body = {"model": model, "input": batch}
        status, _, answer = await exchange(client, "embeddings", body, NO_CACHE, timeout)
    except httpx.HTTPError as exc:
        raise AuditError(f"embeddings request failed: {type(exc).__name__}") from exc
    except Unusable as exc:
        raise AuditError(f"embeddings request failed: {exc}") from None
    if status >= 400:
        raise AuditError(f"embeddings request failed: {error_reason(status, answer)}")
    try:
        return _vectors(answer, len(batch))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise AuditError(f"embeddings answer malformed: {exc!r}") from exc


async def embed(
    client: httpx.AsyncClient, model: str, texts: Sequence[str], timeout: float = 120.0
) -> list[Sequence[float]]:
    """Embeddings of `texts` from the upstream's own /embeddings, in batches it accepts."""
    vectors: list[Sequence[float]] = []
    for start in range(0, len(texts), EMBEDDING_BATCH):
        batch = list(texts[start : start + EMBEDDING_BATCH])
        vectors += await _embed_batch(client, model, batch, timeout)
    return vectors


async def embedding_distance(
    client: httpx.AsyncClient, model: str, counts: Mapping[str, int], timeout: float = 120.0
) -> float | None:
    """Mean pairwise cosine distance; only distinct answers are embedded, none if all agree."""
    if len(counts) < 2:
        return mean_pairwise(counts, lambda a, b: 0.0)
    texts = list(counts)
    vectors = dict(zip(texts, await embed(client, model, texts, timeout), strict=True))
    return mean_pairwise(counts, lambda a, b: cosine_distance(vectors[a], vectors[b]))


async def measure(client: httpx.AsyncClient, plan: Plan, arm: Arm, t: Tally) -> ArmReport:
    if plan.distance == "text":
        return ArmReport(arm, t, text_distance(t.answers))
    try:
        distance = await embedding_distance(client, plan.embedding_model, t.answers, plan.timeout)
        return ArmReport(arm, t, distance)
    except (AuditError, ValueError) as exc:
        return ArmReport(arm, t, None, str(exc))


async def audit(
    client: httpx.AsyncClient, plan: Plan, on_done: Callable[[Arm], None] = lambda arm: None
) -> Report:
    """Run the experiment through `client` (its base URL is the upstream or the proxy)."""
    outcomes = await collect(client, plan, on_done)
    arms = [await measure(client, plan, arm, tally(outcomes[arm.name])) for arm in plan.arms]
    return Report(plan, tuple(arms))
