"""How an entry becomes the bytes a store keeps, and back (pure).

    byte 0     format version (2); the first format began with a 4-byte length, so a 0
    byte 1     codec: 0 plain, 1 zstd, 2 zstd with a trained dictionary
    bytes 2-5  the payload's size once decompressed (big-endian), read without decompressing
    bytes 6-9  the dictionary's id (see `dictionary_id`), with codec 2 only
    then the payload, compressed by the codec:
        4-byte length, the metadata as a JSON array | 4-byte length, the request | the answer

The request is kept as the bytes the upstream received, beside the answer, rather than escaped
inside JSON, and both go through one zstd frame, so an answer's words may refer to the prompt's.
A dictionary trained on the store's own entries (`train`) compresses ~1 KB records far better
than zstd alone, and faster; it lives in the store, shared by every process, and each entry
names the one it needs.

Stored values come back from a store other processes write to: a blob that is not an entry (a
wrong version, a dictionary this process does not know, a frame claiming more than `max_raw`
bytes, a truncated one) raises CorruptEntry, which every reader treats as absent. So does one
whose fields say what no answer can (a fingerprint or content type that is no header value, a
count below zero): they reach a HIT's headers and metrics as they are.
"""

from __future__ import annotations

import hashlib
import math
import struct
from typing import Any

import orjson
import zstandard

from proxy.core.entry import (
    CorruptEntry,
    Entry,
    is_content_type,
    is_count,
    is_dated,
    is_fingerprint,
    is_request_id,
)

FORMAT = 2
PLAIN, ZSTD, ZSTD_DICTIONARY = 0, 1, 2
_HEAD = struct.Struct(">BBI")
HEAD_SIZE = _HEAD.size
_ID = struct.Struct(">I")
_LENGTH = struct.Struct(">I")
_MAX_RAW = 0xFFFFFFFF
DICTIONARY_BYTES = 16 * 1024
MAX_DICTIONARY_BYTES = 1024 * 1024
"""The largest dictionary adopted from a store: a value that big is no dictionary we trained."""
SAMPLE_BYTES = 16 * 1024
"""The largest payload kept to train from: dictionaries are for small records (zstd compresses
large ones well alone), and the samples kept stay bounded by count times this."""
DICTIONARIES_HELD = 4
"""Dictionaries held to read entries with, the newest: one is adopted each time the store's is
replaced, which another writer may do without end; entries naming an older one read as a miss."""

_META = (
    "content_type", "fingerprint", "stored_at", "model", "seed", "seed_source",
    "prompt_tokens", "completion_tokens", "stream", "route", "query", "namespace",
)  # fmt: skip
_TYPES: tuple[type | tuple[type, ...], ...] = (
    str, str, (float, int), str, (int, type(None)), (str, type(None)),
    int, int, bool, str, str, str,
)  # fmt: skip


class TooLarge(ValueError):
    """An entry whose payload the format cannot describe (4 GiB and over)."""


class UnknownDictionary(CorruptEntry):
    """An entry compressed with a dictionary this process does not hold (yet): absent for now;
    the caller may fetch the store's dictionary and read it next time."""

    def __init__(self, number: int) -> None:
        super().__init__(f"unknown dictionary {number:08x}")
        self.number = number


def dictionary_id(data: bytes) -> int:
    """A dictionary's id, from its content: every process that holds it names it alike."""
    return int.from_bytes(hashlib.sha256(data).digest()[:4], "big")


def train(samples: list[bytes], size: int = DICTIONARY_BYTES) -> bytes:
    """A zstd dictionary from entries' payloads (zstd's own trainer, made for ~1 KB records)."""
    chosen: list[bytes | bytearray | memoryview] = list(samples)
    return bytes(zstandard.train_dictionary(size, chosen).as_bytes())


class Codec:
    """Packs entries at one zstd level (0: stored plain) and unpacks any format version.

    One compression context serves every write (a fresh one per entry costs more than the
    compression of a small entry); like the event loop that uses it, it is not for threads."""

    def __init__(self, level: int = 1, max_raw: int = _MAX_RAW, samples: int = 0) -> None:
        """`samples`: payloads of this many entries are kept, as they are packed, to train a
        dictionary from (`samples_ready`), unless the codec holds one already."""
        self.level = level
        self.max_raw = min(max_raw, _MAX_RAW)
        self._compressor = _compressor(level) if level else None
        self._decompressor = zstandard.ZstdDecompressor()
        self._dictionaries: dict[int, zstandard.ZstdDecompressor] = {}
        self.dictionary: int | None = None  # the id new entries are compressed with
        self.samples: list[bytes] = []
        self._wanted = samples if level else 0
        self.packed_bytes = 0  # of every value packed, and what they stand for uncompressed
        self.raw_bytes = 0

    def use(self, data: bytes) -> int:
        """Read entries compressed with this dictionary, and compress new ones with it. Tried
        once first (zstd.ZstdError if it is no dictionary), so packing cannot fail later."""
        if len(data) > MAX_DICTIONARY_BYTES:
            raise zstandard.ZstdError("the dictionary is too large to be one")
        number = dictionary_id(data)
        trained = zstandard.ZstdCompressionDict(data)
        decompressor = zstandard.ZstdDecompressor(dict_data=trained)
        compressor = _compressor(self.level or 1, trained)
        if decompressor.decompress(compressor.compress(b"probe")) != b"probe":
            raise zstandard.ZstdError("the dictionary does not round-trip")
        self._dictionaries[number] = decompressor
        while len(self._dictionaries) > DICTIONARIES_HELD:
            del self._dictionaries[next(iter(self._dictionaries))]
        if self.level:
            self._compressor = compressor
            self.dictionary = number
        self._wanted = 0
        self.samples = []
        return number

    def knows(self, number: int) -> bool:
        return number in self._dictionaries

    @property
    def samples_ready(self) -> bool:
        return bool(self._wanted) and len(self.samples) >= self._wanted

    def take_samples(self) -> list[bytes]:
        """The payloads kept, now in the caller's hands; none are kept until `collect`."""
        samples, self.samples, self._wanted = self.samples, [], 0
        return samples

    def collect(self, count: int) -> None:
        """Keep the payloads of the next `count` entries packed (while no dictionary is used)."""
        if self.level and self.dictionary is None:
            self._wanted = count

    def ratio(self) -> float:
        """Bytes packed over the bytes they stand for, NaN before the first entry."""
        return self.packed_bytes / self.raw_bytes if self.raw_bytes else math.nan

    def pack(self, entry: Entry) -> bytes:
        # The fields after the body, in the order `_parsed` reads them back; then the fields
        # later versions appended, up to the last one set, so that an entry without them stays
        # byte for byte what it was (and readable by a version that knows none of them).
        fields = entry[1 : 1 + len(_META)]
        meta = orjson.dumps((*fields, *_appended(entry)))
        request = entry.request
        payload = b"".join(
            (_LENGTH.pack(len(meta)), meta, _LENGTH.pack(len(request)), request, entry.body)
        )
        if len(payload) > _MAX_RAW:
            raise TooLarge("entry over 4 GiB")
        if self._compressor is None:
            blob = _HEAD.pack(FORMAT, PLAIN, len(payload)) + payload
        elif self.dictionary is None:
            blob = _HEAD.pack(FORMAT, ZSTD, len(payload)) + self._compressor.compress(payload)
            if len(self.samples) < self._wanted and len(payload) <= SAMPLE_BYTES:
                self.samples.append(payload)
        else:
            head = _HEAD.pack(FORMAT, ZSTD_DICTIONARY, len(payload)) + _ID.pack(self.dictionary)
            blob = head + self._compressor.compress(payload)
        self.packed_bytes += len(blob)
        self.raw_bytes += len(payload)
        return blob

    def unpack(self, blob: bytes) -> Entry:
        if blob[:1] == b"\x00":
            return _legacy(blob)
        if len(blob) < _HEAD.size:
            raise CorruptEntry("stored value too short")
        version, codec, raw = _HEAD.unpack_from(blob)
        if version != FORMAT:
            raise CorruptEntry(f"unknown entry format {version}")
        if raw > self.max_raw:
            raise CorruptEntry("stored value expands beyond the entry bound")
        if codec == PLAIN:
            payload = blob[_HEAD.size :]
        elif codec == ZSTD:
            payload = self._decompressed(self._decompressor, blob[_HEAD.size :], raw)
        elif codec == ZSTD_DICTIONARY and len(blob) >= _HEAD.size + _ID.size:
            number = _ID.unpack_from(blob, _HEAD.size)[0]
            decompressor = self._dictionaries.get(number)
            if decompressor is None:
                raise UnknownDictionary(number)
            payload = self._decompressed(decompressor, blob[_HEAD.size + _ID.size :], raw)
        else:
            raise CorruptEntry(f"unknown codec {codec}")
        if len(payload) != raw:
            raise CorruptEntry("stored value has the wrong size")
        return _parsed(payload)

    @staticmethod
    def _decompressed(decompressor: zstandard.ZstdDecompressor, frame: bytes, raw: int) -> bytes:
        """The frame's content, allocated only after its declared size was checked: zstd
        allocates what the frame header claims."""
        try:
            if zstandard.frame_content_size(frame) != raw:
                raise CorruptEntry("stored value declares another size than its frame")
            return decompressor.decompress(frame, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise CorruptEntry("stored value does not decompress") from exc


def raw_size(blob: bytes) -> int:
    """The bytes a stored value stands for uncompressed (its own size if it is not an entry of
    this format): what `/admin/stats` reports beside the stored bytes."""
    if len(blob) >= _HEAD.size and blob[0] == FORMAT:
        return int(_HEAD.unpack_from(blob)[2])
    return len(blob)


def _compressor(
    level: int, dictionary: zstandard.ZstdCompressionDict | None = None
) -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(
        level=level,
        dict_data=dictionary,
        write_checksum=False,
        write_content_size=True,
        write_dict_id=False,
    )


def _parsed(payload: bytes) -> Entry:
    try:
        meta_end = _LENGTH.size + _LENGTH.unpack_from(payload)[0]
        meta = orjson.loads(payload[_LENGTH.size : meta_end])
        request_end = meta_end + _LENGTH.size + _LENGTH.unpack_from(payload, meta_end)[0]
    except (struct.error, orjson.JSONDecodeError) as exc:
        raise CorruptEntry("stored value is not an entry") from exc
    if request_end > len(payload) or not _well_typed(meta):
        raise CorruptEntry("stored value is not an entry")
    request = payload[meta_end + _LENGTH.size : request_end]
    vary, request_id = (meta[i] if i < len(meta) else "" for i in (_VARY, _VARY + 1))
    return Entry(
        payload[request_end:],
        *meta[: len(_META)],
        request=request,
        vary=vary if isinstance(vary, str) else "",
        request_id=_kept_id(request_id),
    )  # type: ignore[misc]


def _appended(entry: Entry) -> tuple[str, ...]:
    if entry.request_id:
        return entry.vary, entry.request_id
    return (entry.vary,) if entry.vary else ()


def _kept_id(value: object) -> str:
    """A stored request id, if it is one to send again: a store another writer reaches may
    hold anything, and this one ends up in a header."""
    return value if isinstance(value, str) and is_request_id(value) else ""


def _well_typed(meta: Any) -> bool:
    """Later versions may append fields: the known ones must be there, each of its type."""
    if not isinstance(meta, list) or len(meta) < len(_META):
        return False
    if not all(isinstance(value, kind) for value, kind in zip(meta, _TYPES, strict=False)):
        return False
    content_type, fingerprint, stored_at, *_, prompt_tokens, completion_tokens = meta[
        : _COMPLETION + 1
    ]
    return (
        is_dated(stored_at)
        and is_fingerprint(fingerprint)
        and is_content_type(content_type)
        and is_count(prompt_tokens)
        and is_count(completion_tokens)
    )


_COMPLETION = _META.index("completion_tokens")
_VARY = len(_META)  # where the appended fields start: `vary`, then `request_id`

_LEGACY_LENGTH = 4


def _legacy(blob: bytes) -> Entry:
    """The first format: a 4-byte length, the metadata as a JSON object, then the body."""
    end = _LEGACY_LENGTH + int.from_bytes(blob[:_LEGACY_LENGTH], "big")
    try:
        meta: dict[str, Any] = orjson.loads(blob[_LEGACY_LENGTH:end])
        request = meta.pop("request", "")
        entry = Entry(body=blob[end:], request=str(request).encode(), **meta)
    except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
        raise CorruptEntry("stored value is not an entry") from exc
    if not _well_typed([getattr(entry, name) for name in _META]):
        raise CorruptEntry("stored value is not an entry")
    return entry._replace(request_id=_kept_id(entry.request_id))
