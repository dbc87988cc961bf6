"""An optional probe that learns fingerprint rotations of models only the cache is answering.

The proxy learns a model's fingerprint from upstream answers. A model whose requests all HIT
never shows a rotation, so with `--probe-interval` the proxy sends, per model requested within
the last `ACTIVE_INTERVALS` intervals and not answered by the upstream during the last one, one
minimal request (one completion token, the default seed) with `--probe-key`. Cost: at most one
such request per active model per interval, for at most MAX_PROBED models. A request that keyed
headers or query parameters route (`routes.routed`) is not probed for: the probe sends no
client's headers, so it would ask another fleet than the one that answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from proxy.core import routes
from proxy.core.canonical import CHAT, COMPLETIONS
from proxy.core.entry import fingerprint_of, is_answer
from proxy.core.fingerprints import tracked
from proxy.errors import UpstreamError
from proxy.server.fingerprints import FingerprintTracker
from proxy.store.base import StoreError
from proxy.upstream.client import ANSWER_LIMIT, Upstream

log = logging.getLogger("proxy.probe")

V = TypeVar("V")

ACTIVE_INTERVALS = 10
MAX_PROBED = 64
"""Models probed per interval at most, the most recently requested: which models are requested
is the clients' to choose (any name the upstream serves), and each probe is a request billed to
`--probe-key`."""


class Prober:
    def __init__(
        self,
        upstream: Upstream,
        fingerprints: FingerprintTracker,
        *,
        interval: float,
        api_key: str | None,
        seed: int,
        clock: Callable[[], float],
    ) -> None:
        self._upstream = upstream
        self._fingerprints = fingerprints
        self._interval = interval
        self._api_key = api_key
        self._seed = seed
        self._clock = clock
        # By lineage, the name answers teach (a chat model and an embeddings model of one name
        # are two): the model and route to probe it with, and when it was last asked for.
        self._requested: dict[str, tuple[str, str, float]] = {}
        self._answered: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return self._interval > 0 and bool(self._api_key)

    def requested(self, model: str, route: str) -> None:
        """A client asked for `model` on `route` (chat or completions). A name longer than any
        model's is never probed: the proxy keeps nothing for it (`tracked`)."""
        if not (self.enabled and model and route in (CHAT, COMPLETIONS)):
            return
        lineage = routes.lineage(model, route)
        if tracked(lineage):
            _newest(self._requested, lineage, (model, route, self._clock()))

    def answered(self, lineage: str) -> None:
        """The upstream answered on `lineage` (`routes.lineage`): its fingerprint is fresh."""
        if self.enabled and tracked(lineage):
            _newest(self._answered, lineage, self._clock())

    def due(self) -> list[tuple[str, str]]:
        """(model, route) pairs to probe now; models idle for long are forgotten."""
        now = self._clock()
        for lineage, (_, _, last) in list(self._requested.items()):
            if now - last > ACTIVE_INTERVALS * self._interval:
                del self._requested[lineage]
        return [
            (model, route)
            for lineage, (model, route, _) in self._requested.items()
            if now - self._answered.get(lineage, float("-inf")) >= self._interval
        ]

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            for model, route in self.due():
                await self.probe(model, route)

    async def probe(self, model: str, route: str) -> None:
        for body in _bodies(model, route, self._seed):
            status, answer = await self._send(route, body)
            if status == 400:
                continue  # some models take only max_tokens, others only max_completion_tokens
            if status == 200 and answer is not None and is_answer(answer):
                await self._learn(routes.lineage(model, route), fingerprint_of(answer))
            else:
                log.warning("probe failed", extra={"model": model, "status": status})
            return

    async def _send(self, route: str, body: dict[str, Any]) -> tuple[int | None, Any]:
        headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"}
        try:
            status, data = await self._upstream.fetch(
                "POST", route, headers, orjson.dumps(body), ANSWER_LIMIT
            )
        except UpstreamError:
            return None, None
        with contextlib.suppress(orjson.JSONDecodeError):
            answer = orjson.loads(data)
            return status, answer if isinstance(answer, dict) else None
        return status, None

    async def _learn(self, lineage: str, fingerprint: str) -> None:
        self.answered(lineage)
        try:
            await self._fingerprints.observe(lineage, fingerprint)
        except StoreError:
            log.warning("probe could not record the fingerprint", extra={"model": lineage})


def _newest(recent: dict[str, V], model: str, value: V) -> None:
    """`model` last in `recent` (a dict keeps its order of insertion), the oldest past
    MAX_PROBED forgotten: the models the clients name are theirs to choose."""
    recent.pop(model, None)
    recent[model] = value
    if len(recent) > MAX_PROBED:
        del recent[next(iter(recent))]


def _bodies(model: str, route: str, seed: int) -> list[dict[str, Any]]:
    if route == COMPLETIONS:
        return [{"model": model, "prompt": "ping", "max_tokens": 1, "seed": seed}]
    message = {"model": model, "messages": [{"role": "user", "content": "ping"}], "seed": seed}
    return [{**message, "max_completion_tokens": 1}, {**message, "max_tokens": 1}]
