"""How the Redis store's hashes read back: an entry's values and labels, a model's fingerprint
records and rotations, the observe script's reply. Pure: bytes in, values out."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from proxy.core.entry import is_dated, is_fingerprint
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
    the script applies core.fingerprints.observed's rule, so the outcome reads back through it.
    A previous current that is no fingerprint reads as none: it would name a metric label and
    fill a log line."""
    previous, new = reply[0], reply[1]
    named = _fingerprint(previous) if previous else None  # what no script wrote: none
    return observed(named, fingerprint, bool(new), moves)


def history_key(model_key: str) -> str:
    """A model's rotation list: its hash's name with `rot:`, so the same hash tag and slot."""
    prefix, _, tag = model_key.rpartition("fp:{")
    return f"{prefix}rot:{{{tag}"


def parse_rotation(raw: bytes | str) -> Rotation | None:
    """A rotation as the observe script writes it; None (left out) for anything else."""
    try:
        record = orjson.loads(raw)
        old, new, at, back = record["old"], record["new"], _time(record["at"]), record["back"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return None
    names = [_fingerprint(name) if isinstance(name, str) else None for name in (old, new)]
    if None in names or at is None or back not in (0, 1):
        return None
    return Rotation(old=old, new=new, at=at, back=bool(back))


def tags(labels: Labels) -> bytes:
    """The labels field; `lineage` only where there is one, which older versions ignore."""
    fields = {"namespace": labels.namespace, "model": labels.model}
    if labels.lineage:
        fields["lineage"] = labels.lineage
    return orjson.dumps(fields)


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
    return Labels(*(str(data.get(name, "")) for name in Labels._fields))


def name(raw: bytes | str) -> str | None:
    """A key or member name, None for one that is no text (no name the proxy writes)."""
    try:
        return raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        return None


def named(field: bytes) -> str:
    """A hash field as a selector reads it: one that is no text still names something."""
    return field.decode(errors="replace")


def parse_model(raw_state: Mapping[bytes | str, bytes | str]) -> ModelFingerprints | None:
    """A model's state, what no version of the scripts writes read as absent (it reaches
    headers, labels and the admin routes): a record that is no record, or under a name that is
    no fingerprint, is left out, and a current that is no fingerprint, or has no record, makes
    no state. The next observation of the model writes them over (see scripts.OBSERVE)."""
    state = {as_bytes(name): value for name, value in raw_state.items()}
    current = _fingerprint(state.get(b"current", b""))
    if current is None:
        return None
    records = []
    for name, raw in state.items():
        fingerprint = _fingerprint(name.removeprefix(_FIELD)) if name.startswith(_FIELD) else None
        found = None if fingerprint is None else _parse_seen(fingerprint, raw)
        if found is not None:
            records.append(found)
    if all(seen.fingerprint != current for _, seen in records):
        return None
    records.sort(key=lambda item: item[0])
    return ModelFingerprints(
        current=current,
        seen=tuple(seen for _, seen in records),
        changes_back=tuple(
            stamp
            for stamp in map(_time, as_bytes(state.get(b"backs", b"")).split())
            if stamp is not None
        ),
    )


def _fingerprint(raw: bytes | str) -> str | None:
    name = as_bytes(raw).decode(errors="replace")
    return name if is_fingerprint(name) else None


def _parse_seen(fingerprint: str, raw: bytes | str) -> tuple[int, FingerprintSeen] | None:
    """(its order, the record), or None for what no script wrote."""
    try:
        record = orjson.loads(raw)
        count, order = _count(record["count"]), _count(record["order"])
        first_seen, last_seen = _time(record["first_seen"]), _time(record["last_seen"])
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return None
    if count is None or order is None or first_seen is None or last_seen is None:
        return None
    return order, FingerprintSeen(fingerprint, first_seen, last_seen, count)


def _count(value: Any) -> int | None:
    """A count as the scripts write it (Lua's %d), within what a counter holds."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return min(max(int(value), 0), 2**63 - 1)


def _time(value: Any) -> float | None:
    """A time a date can name (the admin routes write them as dates)."""
    try:
        stamp = float(value)
    except (TypeError, ValueError):
        return None
    return stamp if is_dated(stamp) else None


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def as_bytes(value: bytes | str) -> bytes:
    """Values are bytes on a client built without decode_responses, which this store expects."""
    return value if isinstance(value, bytes) else value.encode()


def times(reply: Iterable[bytes | str]) -> tuple[float, ...]:
    """The attempts script's reply: the times left, oldest first."""
    return tuple(float(text(value)) for value in reply)
