"""How the Redis store's hashes read back: an entry's values and labels, a model's fingerprint
records and rotations, the observe script's reply. Pure: bytes in, values out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

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
        at=moment(record["at"]),
        back=bool(record["back"]),
    )


_YEAR_9999 = 253402300800.0


def moment(value: Any) -> float:
    """A time as the proxy writes one: a date can name it (a forged 1e300 or "nan" cannot be
    shown, and failed every report that tried)."""
    found = float(value)
    if not 0 <= found < _YEAR_9999:  # NaN fails both
        raise ValueError("not a moment the proxy writes")
    return found


def tags(labels: Labels) -> bytes:
    return orjson.dumps({"namespace": labels.namespace, "model": labels.model})


def values(fields: Iterable[tuple[bytes | str, bytes | str]]) -> dict[str, bytes]:
    """An entry hash's values by fingerprint, without its labels field."""
    named = ((text(fp), value) for fp, value in fields)
    return {fp: as_bytes(value) for fp, value in named if fp != LABELS}


def parse_labels(raw: bytes | str | None) -> Labels:
    if raw is None:
        return Labels()
    data = orjson.loads(raw)
    return Labels(namespace=str(data.get("namespace", "")), model=str(data.get("model", "")))


def parse_model(raw_state: Mapping[bytes | str, bytes | str]) -> ModelFingerprints | None:
    state = {text(name): value for name, value in raw_state.items()}
    if "current" not in state:
        return None
    records = [
        (orjson.loads(raw), name.removeprefix(FIELD))
        for name, raw in state.items()
        if name.startswith(FIELD)
    ]
    records.sort(key=lambda item: int(item[0]["order"]))
    backs = text(state.get("backs", b"")).split()
    current = text(state["current"])
    if not any(fingerprint == current for _, fingerprint in records):
        raise ValueError("the current fingerprint has no record")  # the proxy writes both
    return ModelFingerprints(
        current=current,
        seen=tuple(_parse_seen(fingerprint, record) for record, fingerprint in records),
        changes_back=tuple(moment(stamp) for stamp in backs),
    )


def _parse_seen(fingerprint: str, record: dict[str, Any]) -> FingerprintSeen:
    return FingerprintSeen(
        fingerprint=fingerprint,
        first_seen=moment(record["first_seen"]),
        last_seen=moment(record["last_seen"]),
        count=int(record["count"]),
    )


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def as_bytes(value: bytes | str) -> bytes:
    """Values are bytes on a client built without decode_responses, which this store expects."""
    return value if isinstance(value, bytes) else value.encode()


def times(reply: Iterable[bytes | str]) -> tuple[float, ...]:
    """The attempts script's reply: the times left, oldest first."""
    return tuple(float(text(value)) for value in reply)
