"""Cassettes: stored answers as a JSONL file a repository can commit, loadable into any store.

A line holds one answer with what was asked (route, query, namespace, the request body the
upstream received) and never an API key. Cache keys are not portable, since they hash the tenant
scope, so loading recomputes each key for the target's scope: with `shared` every caller can
replay the cassette (the usual choice in CI); with `key`, it is bound to one API key. Loading also
replays the fingerprint history, so `follow` serves the newest fingerprint of each model.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.core import canonical
from proxy.core.entry import CorruptEntry, Entry
from proxy.errors import ProxyError
from proxy.store.base import Labels, Selector, Store, Write

FORMAT = 1
_META = (
    "route", "query", "namespace", "model", "fingerprint", "stored_at", "seed", "seed_source",
    "stream", "content_type", "prompt_tokens", "completion_tokens",
)  # fmt: skip
_TYPES: dict[str, type | tuple[type, ...]] = {
    "route": str, "query": str, "namespace": str, "model": str, "fingerprint": str,
    "stored_at": (int, float), "seed": (int, type(None)), "seed_source": (str, type(None)),
    "stream": bool, "content_type": str, "prompt_tokens": int, "completion_tokens": int,
}  # fmt: skip


class CassetteError(ValueError):
    """A cassette line we cannot use; the message names the line."""


async def lines(store: Store, selector: Selector) -> AsyncIterator[bytes]:
    """One JSON line per stored answer the selector matches, oldest first within a batch."""
    async for key, _fingerprint, value in store.entries(selector):
        try:
            entry = Entry.unpack(value)
        except CorruptEntry:
            continue
        yield orjson.dumps(to_record(key, entry)) + b"\n"


def to_record(key: str, entry: Entry) -> dict[str, Any]:
    record: dict[str, Any] = {"format": FORMAT, "key": key}
    record.update({name: getattr(entry, name) for name in _META})
    record["request"] = _json_or_text(entry.request)
    try:
        record["body"] = entry.body.decode()
    except UnicodeDecodeError:
        record["body_base64"] = base64.b64encode(entry.body).decode()
    return record


def _json_or_text(request: str) -> Any:
    try:
        return orjson.loads(request)
    except orjson.JSONDecodeError:
        return request


@dataclass(frozen=True, slots=True)
class Loaded:
    key: str
    entry: Entry


def from_record(record: dict[str, Any], scope: str) -> Loaded:
    """The entry and its key under `scope` (the target store's tenant partition)."""
    if not isinstance(record, dict):
        raise CassetteError("a line must be a JSON object")
    if record.get("format") != FORMAT:
        raise CassetteError(f"unknown cassette format {record.get('format')!r}")
    for name, kind in _TYPES.items():
        if not isinstance(record[name], kind):
            raise CassetteError(f"{name!r} has the wrong type")
    request = record["request"]
    body = request if isinstance(request, dict) else canonical.parse_body(request.encode())
    if "body_base64" in record:
        answer = base64.b64decode(record["body_base64"])
    else:
        answer = str(record["body"]).encode()
    raw_request = request if isinstance(request, str) else canonical.dumps(request).decode()
    entry = Entry(body=answer, request=raw_request, **{name: record[name] for name in _META})
    key = canonical.request_key(entry.route, scope, entry.namespace, body, entry.query)
    return Loaded(key, entry)


def parse(text_lines: Iterable[bytes], scope: str) -> list[Loaded]:
    """Every entry of a cassette, oldest first; a bad line fails the whole load."""
    loaded = []
    for number, line in enumerate(text_lines, start=1):
        if not line.strip():
            continue
        try:
            loaded.append(from_record(orjson.loads(line), scope))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, ProxyError) as exc:
            raise CassetteError(f"cassette line {number}: {exc}") from None
    return sorted(loaded, key=lambda item: item.entry.stored_at)


async def load(store: Store, entries: list[Loaded]) -> int:
    """Write the entries, then teach the store each model's fingerprints in time order."""
    for item in entries:
        entry = item.entry
        labels = Labels(namespace=entry.namespace, model=entry.model)
        await store.put(Write(item.key, entry.fingerprint, entry.pack(), 0, labels))
        await store.observe_fingerprint(entry.model, entry.fingerprint, entry.stored_at)
    return len(entries)


def read(path: str, scope: str) -> list[Loaded]:
    with open(path, "rb") as handle:
        return parse(handle, scope)


async def write(store: Store, path: str) -> int:
    """Write every stored answer to `path`, replacing it only once the new file is complete."""
    temporary = f"{path}.tmp-{os.getpid()}"
    count = 0
    with open(temporary, "wb") as handle:
        async for line in lines(store, Selector()):
            handle.write(line)
            count += 1
    os.replace(temporary, path)
    return count
