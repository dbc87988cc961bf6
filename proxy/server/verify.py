"""Drift sampling: for a fraction of HITs, ask the upstream again, in the background, and compare.

The seed is best effort: the same request under the same fingerprint can still come back
different. With `--verify-rate R`, a fraction R of HITs is re-asked after the client got its
answer (never delaying it); the fresh answer's text is compared with the stored one and counted
as `same`, `differs` (with the distance in a histogram per model and fingerprint), `rotated`
(the upstream answered under another fingerprint, which it also teaches the tracker) or `error`.
At most `MAX_IN_FLIGHT` checks run at once; samples beyond that are skipped, not queued. A fresh
answer is read up to `--max-entry`, as large as the stored one may be; beyond, it is an `error`.
The fresh answer is parsed, and the texts compared over a bounded length (MAX_COMPARED), in a
thread, or in the offload child when either answer is large: orjson holds the GIL throughout.
Images and speech are never sampled (`UNCOMPARED`): drawn or spoken anew, they always differ,
and they name no fingerprint to watch. Nor is a HIT whose request forbade the upstream
(`only-if-cached`), nor one that must not be sent again (`proxy.core.reask`); an answer the
upstream keeps is re-asked with `store: false`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.core.credentials import STANDARD, extract, upstream_headers
from proxy.core.entry import TRANSCRIPT, UNCOMPARED, Entry, fingerprint_of, is_answer
from proxy.core.reask import reasked
from proxy.core.routes import CHAT, RESPONSES
from proxy.core.sse import RESPONSE_DONE, TRANSCRIPT_DONE, StreamRecorder
from proxy.core.sse_wire import payloads
from proxy.core.textdistance import normalized_levenshtein
from proxy.core.weight import heavy
from proxy.errors import UpstreamError
from proxy.metrics import Metrics
from proxy.server.fingerprints import FingerprintTracker
from proxy.server.offload import Busy, Offload
from proxy.store.base import StoreError
from proxy.upstream.client import FETCH_LIMIT, Upstream

if TYPE_CHECKING:
    from proxy.core.call import Call

log = logging.getLogger("proxy.verify")

MAX_IN_FLIGHT = 4


def answer_text(body: bytes, stream: bool) -> str:
    """The text an answer carries (contents, completions, tool-call arguments), in choice order;
    for the Responses API, in output order (a stream's, from its `response.completed`); for a
    moderation, its verdicts (flagged and categories, not the scores behind them)."""
    parts: dict[int, list[str]] = {}
    events = _events(body) if stream else [_object(body)]
    for event in events:
        verdicts = [
            {"flagged": result.get("flagged"), "categories": result.get("categories")}
            for result in _listed(event.get("results"))
            if isinstance(result, dict)
        ]
        if verdicts:
            parts.setdefault(0, []).append(
                orjson.dumps(verdicts, option=orjson.OPT_SORT_KEYS).decode()
            )
        response = event.get("response") if event.get("type") == RESPONSE_DONE else event
        if isinstance(response, dict) and isinstance(response.get("output"), list):
            parts.setdefault(0, []).extend(_output_texts(response["output"]))
        for choice in _listed(event.get("choices")):
            if isinstance(choice, dict):
                index = choice.get("index", 0)
                parts.setdefault(index if isinstance(index, int) else 0, []).extend(_texts(choice))
    return "\n".join("".join(parts[index]) for index in sorted(parts))


def _texts(choice: dict[str, Any]) -> list[str]:
    found = []
    for holder in (choice.get("message"), choice.get("delta"), choice):
        if not isinstance(holder, dict):
            continue
        for name in ("content", "text"):
            if isinstance(holder.get(name), str):
                found.append(holder[name])
        for call in _listed(holder.get("tool_calls")):
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                found += [v for v in (function.get("name"), function.get("arguments")) if v]
    return found


def _output_texts(output: list[Any]) -> list[str]:
    """Texts of Responses output items: message text, function names and arguments."""
    found = []
    for item in output:
        if not isinstance(item, dict):
            continue
        for part in _listed(item.get("content")):
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                found.append(part["text"])
        found += [v for v in (item.get("name"), item.get("arguments")) if isinstance(v, str)]
    return found


def _listed(value: object) -> list[Any]:
    """A field read as a list, as clients read it; anything else an upstream puts there (`5`,
    an object) holds no text. Iterated as it came, a number failed the whole drift check, and
    an uncounted failure let an upstream blind the sampler with answers of that shape."""
    return value if isinstance(value, list) else []


def _events(body: bytes) -> list[dict[str, Any]]:
    return [_object(data) for data in payloads(body) if data.strip() != b"[DONE]"]


def _object(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


MAX_COMPARED = 16_384
"""Characters of each answer's text that are compared. The edit distance costs the product of
the two lengths, and answers of a model writing a whole file run to hundreds of KiB: compared
whole, two of them would hold a core for seconds, and the GIL with it, whatever thread runs
the comparison. Drift shows in the first pages of an answer as well as in the whole."""


def answers_drift(stored: bytes, fresh: bytes, stream: bool, shape: str | None = None) -> float:
    """`drift` between the texts of two answer bodies (parsed here: this runs off the loop)."""
    if shape == TRANSCRIPT:
        return drift(transcript_text(stored, stream) or "", transcript_text(fresh, stream) or "")
    return drift(answer_text(stored, stream), answer_text(fresh, stream))


def transcript_text(body: bytes, stream: bool = False) -> str | None:
    """A transcript's text, None for no transcript: a JSON object's `text` (`json`,
    `verbose_json`), or the body itself (`text`, `srt`, `vtt`); a stream's, its ending event's
    (`transcript.text.done`). A fetch reads no label, so a JSON object without its text (a
    gateway's error sent with a 200) is none, where a text that happens to parse as something
    else (`42`) is still text."""
    if stream:
        ends = [e for e in _events(body) if e.get("type") == TRANSCRIPT_DONE]
        text = ends[-1].get("text") if ends else None
        return text if isinstance(text, str) else None
    answer = _object(body)
    if answer:
        text = answer.get("text")
        return text if answer.get("error") is None and isinstance(text, str) else None
    try:
        said = body.decode()
    except UnicodeDecodeError:
        return None
    return said if said.strip() else None


def drift(stored: str, fresh: str) -> float:
    """Normalized edit distance in [0, 1] over the first MAX_COMPARED characters of each text.
    Texts that differ only past the cap count as one edit apart: 0 still means equal."""
    if stored == fresh:
        return 0.0
    distance = normalized_levenshtein(stored[:MAX_COMPARED], fresh[:MAX_COMPARED])
    return distance or 1 / max(len(stored), len(fresh))


def fresh_fingerprint(
    body: bytes, stream: bool, kind: str = CHAT, shape: str | None = None
) -> str | None:
    """The fingerprint the fresh answer teaches, as the client path would learn it from the
    same answer; None for one that teaches nothing (an error some gateways send with status
    200, a stream that named no fingerprint and never ended cleanly): such an answer is an
    `error`, not a rotation to `none` that would make every stored answer of the model stale."""
    if stream:
        recorder = StreamRecorder(len(body) + 1, kind)
        recorder.feed(body)
        return recorder.taught
    if shape == TRANSCRIPT:
        return None if transcript_text(body) is None else "none"
    answer = _object(body)
    return fingerprint_of(answer, shape) if is_answer(answer, kind == RESPONSES) else None


class Verifier:
    def __init__(
        self,
        upstream: Upstream,
        offload: Offload,
        fingerprints: FingerprintTracker,
        metrics: Metrics,
        rate: float,
        draw: Callable[[], float],
        carriers: tuple[str, ...] = STANDARD,
        limit: int = FETCH_LIMIT,
    ) -> None:
        self._upstream = upstream
        self._offload = offload
        self._limit = limit
        self._fingerprints = fingerprints
        self._metrics = metrics
        self._rate = rate
        self._draw = draw
        self._carriers = carriers
        self._tasks: set[asyncio.Task[None]] = set()

    def sample(self, call: Call, entry: Entry, headers: CIMultiDictProxy[str]) -> None:
        """Maybe start a background check of this HIT, with the caller's credentials from its
        request `headers` (read only when sampled); returns at once either way."""
        if self._rate <= 0 or call.shape in UNCOMPARED or not call.plan.upstream:
            return
        if self._draw() >= self._rate or len(self._tasks) >= MAX_IN_FLIGHT:
            return
        auth = upstream_headers(extract(headers, self._carriers))
        task = asyncio.create_task(self._check(call, entry, auth))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _check(self, call: Call, entry: Entry, auth: Mapping[str, str]) -> None:
        model = self._metrics.model(call.counted)
        aside = self._offload.run if heavy(call.body) else asyncio.to_thread
        try:
            body = await aside(reasked, call.kind, call.body)
        except (BrokenProcessPool, Busy):
            self._metrics.verify.labels(model, "error").inc()
            return
        if body is None:
            return
        fresh = await self._ask(call, body, auth)
        if fresh is None:
            self._metrics.verify.labels(model, "error").inc()
            return
        aside = self._offload.run if heavy(fresh) or heavy(entry.body) else asyncio.to_thread
        try:
            fingerprint = await aside(
                fresh_fingerprint, fresh, entry.stream, call.events, call.shape
            )
        except (BrokenProcessPool, Busy):
            fingerprint = None
        if fingerprint is None:
            self._metrics.verify.labels(model, "error").inc()
            return
        with contextlib.suppress(StoreError):  # the comparison stands without the bookkeeping
            await self._fingerprints.observe(call.lineage, fingerprint)
        if fingerprint != entry.fingerprint:
            self._metrics.verify.labels(model, "rotated").inc()
            return
        try:
            distance = await aside(answers_drift, entry.body, fresh, entry.stream, call.shape)
        except (BrokenProcessPool, Busy):
            self._metrics.verify.labels(model, "error").inc()
            return
        fingerprint = self._metrics.fingerprint(model, entry.fingerprint)
        self._metrics.verify_distance.labels(model, fingerprint).observe(distance)
        self._metrics.verify.labels(model, "same" if distance == 0 else "differs").inc()

    async def _ask(self, call: Call, body: bytes, auth: Mapping[str, str]) -> bytes | None:
        headers = CIMultiDict(auth)
        # What the answer was keyed by (its gateway route, its org); a credential keyed too (a
        # cookie in `shared` scope) is among `auth` already, and sent twice it asks otherwise.
        headers.extend((name, value) for name, value in call.headers if name not in auth)
        headers["Content-Type"] = call.content_type
        try:
            status, body = await self._upstream.fetch(
                "POST", call.target, headers, body, self._limit
            )
        except UpstreamError as exc:
            log.info("verification failed", extra={"key": call.key, "error": exc.code})
            return None
        return body if status == 200 else None
