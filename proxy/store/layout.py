"""How the Redis store's hashes read back: an entry's values and labels, a model's fingerprint
records and rotations, the observe script's reply. Pure: bytes in, values out."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from proxy.core.entry import is_count, is_fingerprint
from proxy.core.fingerprints import (
    FingerprintSeen,
    ModelFingerprints,
    Observation,
    Rotation,
    observed,
)
from proxy.store.base import Labels

FIELD = "fp:"
"""The prefix of a model hash's fingerprint fields: no fingerprint collides with `model`,
`current` or `seen`."""
_FIELD = FIELD.encode()
LABELS = "\x00labels"
"""The labels field of an entry hash: no fingerprint from an upstream starts with a NUL."""


def observation(reply: list[Any], fingerprint: str, moves: bool = True) -> Observation:
    """The observe script's reply: {previous current or nil, 1 if new, 1 if it moved current};
    the script applies core.fingerprints.observed's rule, so the outcome reads back through it."""
    previous, new = reply[0], reply[1]
    return observed(text(previous) if previous else None, fingerprint, bool(new), moves)


def history_key(model_key: str) -> str:
    """A model's rotation list: its hash's name with `rot:`, so the same hash tag and slot."""
    prefix, _, tag = model_key.rpartition("fp:{")
    return f"{prefix}rot:{{{tag}"


def parse_rotation(raw: bytes | str) -> Rotation:
    record = orjson.loads(raw)
    return Rotation(
        old=str(record["old"]),
        new=str(record["new"]),
        at=float(record["at"]),
        back=bool(record["back"]),
    )


def tags(labels: Labels) -> bytes:
    return orjson.dumps({"namespace": labels.namespace, "model": labels.model})


def values(fields: Iterable[tuple[bytes | str, bytes | str]]) -> dict[str, bytes]:
    """An entry hash's values by fingerprint, without its labels field, nor a field that is no
    text (so no fingerprint: another writer's), which reads as absent."""
    found: dict[str, bytes] = {}
    for field, value in fields:
        try:
            fingerprint = field.decode() if isinstance(field, bytes) else field
        except UnicodeDecodeError:
            continue
        if fingerprint != LABELS:
            found[fingerprint] = value if isinstance(value, bytes) else value.encode()
    return found


def parse_labels(raw: bytes | str | None) -> Labels:
    """An entry's labels; none where they are not what `tags` writes (another writer's), so
    that only a purge of everything selects it, and one bad entry stops no purge."""
    try:
        data = orjson.loads(raw) if raw is not None else {}
    except orjson.JSONDecodeError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    return Labels(namespace=str(data.get("namespace", "")), model=str(data.get("model", "")))


def named(field: bytes) -> str:
    """A hash field as a selector reads it: one that is no text still names something."""
    return field.decode(errors="replace")


def parse_model(raw_state: Mapping[bytes | str, bytes | str]) -> ModelFingerprints | None:
    """A model's state; ValueError for one no version of the scripts writes (a current that is
    no fingerprint, a record that is no record): it reaches headers, labels and the admin
    routes. A record under a name that is no fingerprint is left out, as absent."""
    state = {as_bytes(name): value for name, value in raw_state.items()}
    if b"current" not in state:
        return None
    current = text(state[b"current"])
    if not is_fingerprint(current):
        raise ValueError("the current fingerprint is no fingerprint")
    records = []
    for name, raw in state.items():
        fingerprint = name.removeprefix(_FIELD).decode(errors="replace")
        if name.startswith(_FIELD) and is_fingerprint(fingerprint):
            records.append(_parse_seen(fingerprint, orjson.loads(raw)))
    records.sort(key=lambda item: item[0])
    backs = text(state.get(b"backs", b"")).split()
    return ModelFingerprints(
        current=current,
        seen=tuple(seen for _, seen in records),
        changes_back=tuple(_time(stamp) for stamp in backs),
    )


def _parse_seen(fingerprint: str, record: dict[str, Any]) -> tuple[int, FingerprintSeen]:
    """(its order, the record); ValueError (or TypeError, KeyError) for what no script wrote."""
    count, order = record["count"], record["order"]
    if not all(isinstance(n, int) and is_count(n) for n in (count, order)):
        raise ValueError("a fingerprint's count is no count")
    seen = FingerprintSeen(
        fingerprint=fingerprint,
        first_seen=_time(record["first_seen"]),
        last_seen=_time(record["last_seen"]),
        count=count,
    )
    return order, seen


def _time(value: Any) -> float:
    stamp = float(value)
    if not math.isfinite(stamp):
        raise ValueError("a time is no time")
    return stamp


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def as_bytes(value: bytes | str) -> bytes:
    """Values are bytes on a client built without decode_responses, which this store expects."""
    return value if isinstance(value, bytes) else value.encode()


def times(reply: Iterable[bytes | str]) -> tuple[float, ...]:
    """The attempts script's reply: the times left, oldest first."""
    return tuple(float(text(value)) for value in reply)
