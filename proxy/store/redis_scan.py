"""The Redis store's walks over every entry: SCAN for the names, pipelines for the reads.

Only the admin routes walk (purge, export, stats); requests read one key each through the
store's batcher. A walk asks every node of a cluster, deduplicates what SCAN returns twice, and
reads and deletes in batches of `SCAN_BATCH` names, so that no reply holds the whole keyspace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from proxy.store import layout
from proxy.store.base import Selector

SCAN_BATCH = 500


async def entry_names(client: Any, pattern: str) -> AsyncIterator[list[bytes]]:
    """Every entry's name once, in batches. SCAN may return a name twice (while Redis grows
    its table), which would count or export an entry twice: names are deduplicated here."""
    seen: set[bytes] = set()
    batch: list[bytes] = []
    async for name in client.scan_iter(match=pattern, count=SCAN_BATCH):
        if name in seen:
            continue
        seen.add(name)
        batch.append(name)
        if len(batch) >= SCAN_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


async def purge_batch(client: Any, names: list[bytes], selector: Selector, dry_run: bool) -> int:
    """How many answers of these entries `selector` matches; unless `dry_run`, they are
    deleted: a whole entry when all its answers match, else the matching fields. Labels and
    field names are read, never the values."""
    async with client.pipeline(transaction=False) as pipe:
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
        async with client.pipeline(transaction=False) as pipe:
            for name in whole:
                pipe.delete(name)
            for name, chosen in partial:
                pipe.hdel(name, *chosen)
            await pipe.execute()
    return matched


async def read_batch(
    client: Any, names: list[bytes], selector: Selector, key_at: int
) -> list[tuple[str, str, bytes]]:
    """(key, fingerprint, value) of each answer of these entries that `selector` matches; an
    entry's cache key starts at `key_at` in its name and runs to the closing brace."""
    async with client.pipeline(transaction=False) as pipe:
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
        key = text[key_at:-1]
        found += [
            (key, fp, layout.as_bytes(value))
            for fp, value in named.items()
            if selector.matches(labels, fp)
        ]
    return found
