"""Form requests (audio transcriptions and translations, image edits and variations): the
multipart body read as the key names it, and written again as the upstream receives it (pure).

An upload is keyed by what can change its answer: each text field's value, and each file by
the SHA-256 of its bytes, their length, the filename's extension and the declared type (the
format a server reads them as), never the name the client gave it nor the boundary it chose.
A store keeps that view, not the upload: an entry, a cassette line, holds the file's digest.

The upstream receives the parts as the proxy read them, written anew with a boundary of its
own: a body that two multipart readers would read apart (a repeated part, a stray header, a
field after the closing delimiter) can then not make the key name one question and the
upstream answer another. Parsing is python-multipart's (Starlette's), within bounds.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from proxy.core import canonical
from proxy.errors import InvalidBody, InvalidHeader, InvalidParameter

if TYPE_CHECKING:  # a type the package declares for checkers only
    from python_multipart.multipart import MultipartCallbacks

FORM_TYPE = "multipart/form-data"
MAX_PARTS = 64
"""Parts a form may have: an upload names a dozen parameters at most."""
MAX_FIELD = 1024 * 1024
"""Bytes of a text field: a `prompt` is a few hundred tokens."""
NUMBERS = frozenset({"temperature", "n"})
"""Fields read as numbers, so that `0`, `0.0` and `0e0` are one key."""
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,16}\Z")
_PLAIN = re.compile(r"[ -~]{1,255}")
_NAME = re.compile(r"[A-Za-z0-9_.\[\]-]{1,128}")
_NUMBER = re.compile(r"-?[0-9]{1,16}(?:\.[0-9]{1,16})?(?:[eE][-+]?[0-9]{1,3})?")


class Part(NamedTuple):
    name: str
    filename: str | None
    content_type: str
    data: bytes | memoryview  # a view of the request's body where it lies there whole


class Form(NamedTuple):
    """A form as the key names it (`keyed`, parsed as a JSON body is) and as the upstream
    receives it (`body`, labelled `content_type`)."""

    keyed: dict[str, Any]
    body: bytes
    content_type: str


def is_json(content_type: str) -> bool:
    """Whether a request on a form route is JSON instead (image edits may name their images
    by URL or file id): read as JSON, as on any other route, and sent on as JSON."""
    return content_type.partition(";")[0].strip().lower() == "application/json"


def read(raw: bytes, content_type: str) -> Form:
    """The form a request's body holds; 400 for any body that is not one well-formed form."""
    media, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    if media != FORM_TYPE.encode() or not boundary:
        raise InvalidHeader(
            "This route takes a multipart/form-data body, with its boundary.", "Content-Type"
        )
    parts = _parts(raw, boundary)
    keyed = _keyed(parts)
    return Form(keyed, *_written(parts, keyed))


def _parts(raw: bytes, boundary: bytes) -> list[Part]:
    reader = _Reader(raw)
    parser = MultipartParser(boundary, reader.callbacks(), max_header_count=4)
    try:
        parser.write(raw)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidBody(f"The multipart body could not be read: {exc}") from None
    if not reader.ended:
        raise InvalidBody("The multipart body ends before its closing delimiter.")
    return reader.parts


class _Reader:
    """The parts python-multipart finds, gathered from its callbacks. A part's bytes are a view
    of the body they lie in, not a copy: an upload of 16 MiB was held four times over while
    it was read, where the body and the form written from it are all it needs."""

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self.parts: list[Part] = []
        self.ended = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._field = b""
        self._value = b""
        self._data: list[bytes | memoryview] = []

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise InvalidBody(f"A form may have at most {MAX_PARTS} parts.")
        self._headers, self._data = [], []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers.append((self._field.strip().lower(), self._value.strip()))
        self._field = self._value = b""

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        # the parser hands over the body itself, or (a boundary's prefix held back) its own bytes
        self._data.append(memoryview(data)[start:end] if data is self._raw else data[start:end])

    def _part_end(self) -> None:
        data = self._data[0] if len(self._data) == 1 else b"".join(self._data)
        self.parts.append(_part(self._headers, data))

    def _end(self) -> None:
        self.ended = True


def _part(headers: list[tuple[bytes, bytes]], data: bytes | memoryview) -> Part:
    """A part named by its one Content-Disposition of form-data, typed by at most one
    Content-Type; any other header is refused, as no reader agrees on what it changes."""
    names = [name for name, _ in headers]
    if names.count(b"content-disposition") != 1 or len(set(names)) != len(names):
        raise InvalidBody("Each part must have one Content-Disposition, and no header twice.")
    if not set(names) <= {b"content-disposition", b"content-type"}:
        raise InvalidBody("A part may have only Content-Disposition and Content-Type headers.")
    found = dict(headers)
    disposition, options = parse_options_header(found[b"content-disposition"])
    name = options.get(b"name", b"").decode("latin-1")
    if disposition != b"form-data" or _NAME.fullmatch(name) is None:
        raise InvalidBody(
            "Each part must be form-data named by 1 to 128 letters, digits, '_', '.', '-' or '[]'."
        )
    kind = parse_options_header(found.get(b"content-type", b""))[0].decode("latin-1")
    if kind and _PLAIN.fullmatch(kind) is None:
        raise InvalidBody("A part's Content-Type must be printable ASCII.")
    filename = options.get(b"filename")
    if filename is None and len(data) > MAX_FIELD:
        raise InvalidParameter(f"A field is longer than {MAX_FIELD} bytes.", name)
    return Part(name, None if filename is None else filename.decode("latin-1"), kind, data)


def _keyed(parts: list[Part]) -> dict[str, Any]:
    """What the key names: a field's value (a `name[]` field's values in order), a file's
    digest. A name given twice without `[]` is refused, as a JSON key given twice is: readers
    disagree on which copy wins."""
    keyed: dict[str, Any] = {}
    for part in parts:
        value = _value(part)
        if part.name.endswith("[]"):
            listed = keyed.setdefault(part.name, [])
            if not isinstance(listed, list):
                raise InvalidParameter("A field is given both as a list and not.", part.name)
            listed.append(value)
        elif part.name in keyed:
            raise InvalidParameter(f"The field {part.name} is given more than once.", part.name)
        else:
            keyed[part.name] = value
    return canonical.parse_body(orjson.dumps(keyed))


FILE_VIEW = frozenset({"sha256", "bytes", "extension", "type"})
"""The fields of a file as the key names it (`_value`)."""


def check_json(body: dict[str, Any]) -> None:
    """A JSON body on a form route is refused where it holds an object shaped as the key names
    an uploaded file: it would share the key of the upload it mimics, and an upstream reading
    it leniently would answer it without the file, an answer then served to whoever uploads
    the file (in `shared` scope, any tenant). No API reads a file so."""
    for name, value in body.items():
        for item in value if isinstance(value, list) else (value,):
            if isinstance(item, dict) and item.keys() == FILE_VIEW:
                raise InvalidParameter(
                    "A file is uploaded as multipart/form-data, not named in a JSON body.", name
                )


def _value(part: Part) -> object:
    if part.filename is not None:
        found = _EXTENSION.search(part.filename)
        return {
            "sha256": hashlib.sha256(part.data).hexdigest(),
            "bytes": len(part.data),
            "extension": found.group().lower() if found else "",
            "type": part.content_type,
        }
    try:
        text = bytes(part.data).decode()
    except UnicodeDecodeError:
        raise InvalidParameter("A field's value must be UTF-8.", part.name) from None
    if part.name in NUMBERS and _NUMBER.fullmatch(text):
        number = float(text)
        return number if math.isfinite(number) else text  # `1e999` is no number JSON can key
    return text


def _written(parts: list[Part], keyed: dict[str, Any]) -> tuple[bytes, str]:
    """The parts as the upstream receives them, under a boundary of the proxy's: named by
    the digest of what the key names, so that the same form is the same bytes each time, and
    no part can hold it (it would hold the digest of itself)."""
    digest = hashlib.sha256(orjson.dumps(keyed, option=orjson.OPT_SORT_KEYS)).hexdigest()
    boundary = "repro-" + digest[:40]
    delimiter = b"--" + boundary.encode()
    found = re.compile(re.escape(delimiter)).search  # reads a view as it reads bytes
    pieces: list[bytes | memoryview] = []  # joined once: the upload is copied once, not grown
    for part in parts:
        if found(part.data):
            raise InvalidBody("A part holds the form's own delimiter.")
        disposition = f'form-data; name="{part.name}"'
        if part.filename is not None:  # a field is its value alone, as the key names it
            disposition += f'; filename="{_sent_name(part)}"'
        head = delimiter + b"\r\nContent-Disposition: " + disposition.encode() + b"\r\n"
        if part.filename is not None and part.content_type:
            head += b"Content-Type: " + part.content_type.encode() + b"\r\n"
        pieces += (head, b"\r\n", part.data, b"\r\n")
    pieces.append(delimiter + b"--\r\n")
    return b"".join(pieces), f"{FORM_TYPE}; boundary={boundary}"


def _sent_name(part: Part) -> str:
    """The filename the upstream receives: `upload` and the extension the key names, since
    the rest of the client's name is not keyed and must not reach an answer served to others
    (a server may echo it)."""
    found = _EXTENSION.search(part.filename or "")
    return "upload" + (found.group().lower() if found else "")
