"""The Redis store's calls apart from the hot path: purge, export and usage walk every entry
with SCAN, in batches (on every node of a cluster), never blocking the server; the keep round
trims the model index. And the invalidation messages near-caches read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from proxy.core.fingerprints import MODELS_KEPT, ROUTED_KEPT
from proxy.core.routes import routed
from proxy.store import layout, scripts
from proxy.store.base import Selector, StoreError, Usage
from proxy.store.batch import Batcher
from proxy.store.redis_client import mapped

ENTRY_CHANGED, MODEL_CHANGED = "e\x00", "m\x00"
"""Invalidation messages: an entry key, a model's fingerprint state."""

EVERYTHING_CHANGED = "*"
"""The invalidation a purge announces: near-caches drop everything."""

_SCAN_BATCH = 500

_SORT_ROUNDS = 256
"""SSCAN batches a keep round reads of the models index for routed names; the rest waits for
the next round."""

_TRIM_BATCH = 1024
"""Names a keep round forgets per command batch."""

_TRIM_ROUNDS = 1024
"""Batches a keep round trims an index by: a million names; the rest waits for the next."""

NAMES_REMEMBERED = 1 << 18
"""Entry names a walk remembers to skip SCAN's repeats: remembering each, a walk of a large
Redis (stats, purge, export) held the names of every entry in the proxy's memory at once. Past
it a name repeated (only while Redis resizes its table during the walk) counts twice in the
stats, a purge's dry run, or an export (whose import stores the same answer twice)."""


class Scans:
    """What RedisStore walks its entries with; it provides the client, the batcher, the channel
    writes announce themselves on, its deadline, and the key names of entries and models."""

    _client: Any
    _batch: Batcher
    invalidations: str
    deadline: float | None

    def _entry(self, key: str) -> str:
        raise NotImplementedError

    def _model(self, model: str) -> str:
        raise NotImplementedError

    def _models(self) -> str:
        raise NotImplementedError

    def _routed(self) -> str:
        raise NotImplementedError

    def _index(self, model: str) -> str:
        """The index a lineage is named in: routed ones apart, trimmed to a bound of their own."""
        return self._routed() if routed(model) else self._models()

    async def purge(self, selector: Selector, dry_run: bool) -> int:
        """SCAN in batches (every node of a cluster), reading labels and field names only."""
        matched = 0
        with mapped("purge"):
            async for batch in self._scanned():
                matched += await self._purge_batch(batch, selector, dry_run)
        return matched

    async def _purge_batch(self, names: list[bytes], selector: Selector, dry_run: bool) -> int:
        async with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(name, layout.LABELS)
                pipe.hkeys(name)
            replies = await pipe.execute(raise_on_error=False)
        matched = 0
        whole: list[bytes] = []
        partial: list[tuple[bytes, list[bytes]]] = []
        for name, raw, fields in zip(names, replies[::2], replies[1::2], strict=True):
            if isinstance(fields, Exception):  # a key of another type: another writer's
                continue
            labels = layout.parse_labels(raw)
            fingerprints = [field for field in fields if field != layout.LABELS.encode()]
            chosen = [fp for fp in fingerprints if selector.matches(labels, layout.named(fp))]
            matched += len(chosen)
            if chosen and len(chosen) == len(fingerprints):
                whole.append(name)
            elif chosen:
                partial.append((name, chosen))
        if not dry_run and (whole or partial):
            async with self._client.pipeline(transaction=False) as pipe:
                for name in whole:
                    pipe.delete(name)
                for name, chosen in partial:
                    pipe.hdel(name, *chosen)
                # With each batch's deletions, not once after the last: a purge that fails
                # part way (a Redis that stalls) left what it had deleted in every near-cache.
                if self.invalidations:
                    pipe.publish(self.invalidations, EVERYTHING_CHANGED)
                await pipe.execute()
        return matched

    async def entries(self, selector: Selector) -> AsyncIterator[tuple[str, str, bytes]]:
        with mapped("entries"):
            async for batch in self._scanned():
                for item in await self._read_batch(batch, selector):
                    yield item

    async def _scanned(self, remember: int = NAMES_REMEMBERED) -> AsyncIterator[list[bytes]]:
        """Every entry's name, in batches. SCAN may return a name twice (while Redis resizes
        its table), which would count or export an entry twice: the first `remember` names
        are deduplicated here (see NAMES_REMEMBERED)."""
        seen: set[bytes] = set()
        batch: list[bytes] = []
        async for name in self._client.scan_iter(match=self._entry("*"), count=_SCAN_BATCH):
            if name in seen:
                continue
            if len(seen) < remember:
                seen.add(name)
            batch.append(name)
            if len(batch) >= _SCAN_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    async def _read_batch(
        self, names: list[bytes], selector: Selector
    ) -> list[tuple[str, str, bytes]]:
        async with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(name)
            replies = await pipe.execute(raise_on_error=False)
        found = []
        for name, fields in zip(names, replies, strict=True):
            text = layout.name(name)
            if text is None or isinstance(fields, Exception):  # no key the proxy writes
                continue
            labels = layout.parse_labels(fields.get(layout.LABELS.encode()))
            named = layout.values(fields.items())
            key = text[len(self._entry("")) - 1 : -1]
            found += [
                (key, fp, layout.as_bytes(value))
                for fp, value in named.items()
                if selector.matches(labels, fp)
            ]
        return found

    async def usage(self) -> Usage:
        """Entries by SCAN, bytes as Redis accounts them (MEMORY USAGE), in batches; a script
        measures each entry, so that no value crosses the network (see scripts.USAGE)."""
        totals = [0, 0, 0]  # answers, bytes, what they grow by uncompressed
        with mapped("usage"):
            async for chunk in self._scanned():
                for measured in await asyncio.gather(*map(self._measure, chunk)):
                    totals = [t + int(m) for t, m in zip(totals, measured, strict=True)]
        return Usage(totals[0], totals[1], totals[1] + totals[2])

    def _measure(self, name: bytes) -> Any:
        return self._batch.script(scripts.USAGE, [layout.text(name)], [layout.LABELS])

    _routed_sorted = False  # whether this process has moved the older versions' routed names

    async def keep(self) -> None:
        """One round of the proxy's keep (server/keep.py): the models past MODELS_KEPT leave
        the index with their records, drawn at random as Redis's `allkeys-random` draws (knowing
        the least recently used would cost a write per HIT). Which names the upstream answers
        for is not the proxy's to choose, and each was a record kept for good; one forgotten
        is learned again from its next answer. Routed lineages, past ROUTED_KEPT, leave their
        own index alike, so no number of them draws a model's record. Near-caches hear of each.
        Routed lineages an older version named in the models index move to theirs first
        (`_sort_routed`). A failing store is left for the next round."""
        try:
            with mapped("keep"):
                async with asyncio.timeout(self.deadline):
                    over = await self._client.scard(self._models()) > MODELS_KEPT
                    if over or not self._routed_sorted:
                        await self._sort_routed()
                    await self._trim(self._models(), MODELS_KEPT)
                    await self._trim(self._routed(), ROUTED_KEPT)
        except StoreError:
            return

    async def _sort_routed(self) -> None:
        """Move the routed lineages (`routes.routed`) the models index holds to the routed one.
        Versions before the routed bound named them with the models: there they count against
        MODELS_KEPT, drawing models' records out, and no routed bound trims them. Done on a
        process's first round, and again on any round that finds the models index over its
        bound (an older replica still running, in a rolling upgrade, names them there still).
        Added to the routed index before they leave the models one, so a name is never in
        neither; each step is idempotent, so replicas doing it at once end alike, and the two
        indexes may sit on two nodes of a cluster. `_SORT_ROUNDS` batches a round at most."""
        models, cursor = self._models(), 0
        for _ in range(_SORT_ROUNDS):
            cursor, names = await self._client.sscan(models, cursor, count=_SCAN_BATCH)
            moved = [raw for raw in names if routed(layout.name(raw) or "")]
            if moved:
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.sadd(self._routed(), *moved)
                    pipe.srem(models, *moved)
                    await pipe.execute()
            if int(cursor) == 0:
                self._routed_sorted = True
                return

    async def _trim(self, index: str, bound: int) -> None:
        """Down to `bound`, however many came in since the last round (a client inventing a
        routing per request adds far more than `bound` a round), `_TRIM_BATCH` at a time, at
        most `_TRIM_ROUNDS` batches a round. Each batch is counted and drawn in one script:
        counted first and drawn after, two replicas trimming at once each drew all that was
        over, forgetting real models' records under the bound."""
        for _ in range(_TRIM_ROUNDS):
            gone = await self._batch.script(scripts.TRIM, [index], [bound, _TRIM_BATCH])
            if not gone:
                return
            await self._forget_models(filter(None, map(layout.name, gone)))

    async def _forget_models(self, models: Iterable[str]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for model in models:
                name = self._model(model)
                pipe.delete(name)
                pipe.delete(layout.history_key(name))
                if self.invalidations:
                    pipe.publish(self.invalidations, MODEL_CHANGED + model)
            await pipe.execute()
