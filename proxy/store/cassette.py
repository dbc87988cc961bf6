"""Cassettes: stored answers as a JSONL file a repository can commit, loadable into any store.

A line holds one answer with what was asked (route, query, namespace, the request body the
upstream received with a tool's credentials sealed (`sealing.sealed`), and the digest its key
names of the request's keyed headers, `vary`) and never an API key or a header's value. Cache
keys are not portable, since they hash the tenant scope, so loading recomputes each key for the
target's scope: with `shared` every caller can replay the cassette (the usual choice in CI); with
`key`, it is bound to one API key. Loading also replays the fingerprint history, so `follow`
serves the newest fingerprint of each model.

A file is written whole and then moved into place, its lines sorted by what was asked, so that
recording the same requests again changes only the lines whose answers changed
(`cassette_write`). Reading refuses
a line that is not one of ours (a field we do not write, such as headers or a key) and one too
large to be an answer, naming the line.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import stat
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from proxy.core import canonical, paths, reads, responses, routes, sse_wire, terminal
from proxy.core.call import MAX_NAMESPACE
from proxy.core.codec import Codec
from proxy.core.credentials import split_query
from proxy.core.entry import CorruptEntry, Entry, is_dated, is_fingerprint, is_request_id
from proxy.core.fingerprints import MAX_MODEL_NAME, tracked
from proxy.core.sealing import sealed
from proxy.errors import InvalidPath, ProxyError
from proxy.store.base import Selector, Store, Write, labelled
from proxy.store.retired import Retired

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
# Fields every reader (load, import, diff) takes as they are: a wrong type is refused here.
_OPTIONAL_TYPES: dict[str, type | tuple[type, ...]] = {
    "request": (dict, str), "body": str, "body_base64": str, "recorded_at": str, "vary": str,
    "request_id": str,
}  # fmt: skip


_FIELDS = frozenset(
    {"format", "key", "request", "body", "body_base64", "recorded_at", "vary", "request_id", *_META}
)
# Fields a hand-edited or foreign line may carry that must never be committed with a cassette.
_SECRET_FIELDS = ("header", "authorization", "api_key", "api-key", "token", "secret", "cookie")
_CONTENT_TYPE = re.compile(r"[ -~]{1,255}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
MAX_LINE = 64 * 1024 * 1024  # above the largest answer stored (--max-entry), base64 included
MAX_CASSETTE = 1024 * 1024 * 1024
"""Every reader (the proxy, the plugin, import, diff) holds the whole file: beyond this it is
refused, not read until memory runs out. Its lines are independent: a larger export splits."""


class CassetteError(ValueError):
    """A cassette line we cannot use; the message names the line."""


@dataclass
class Skipped:
    """Stored values an export passed over: `count` unreadable here (an operator told nothing
    would take a store of answers sealed with a key the command lacks for an empty one), and
    `refused` those a cassette may not hold, each as why."""

    count: int = 0
    refused: list[str] = field(default_factory=list)


async def lines(
    store: Store,
    selector: Selector,
    codec: Codec,
    skipped: Skipped | None = None,
    retired: Retired | None = None,
) -> AsyncIterator[bytes]:
    """One JSON line per stored answer the selector matches, oldest first within a batch, then
    one per answer a recording kept after the upstream deleted it (`retired`, whole recordings
    only), unless the store holds a newer answer under its key. A line every reader of
    cassettes would refuse is left out (see `refusal`)."""
    held: set[str] = set()  # only read for `retired`
    async for key, _fingerprint, value in store.entries(selector):
        if retired is not None:
            held.add(key)
        line = _line(key, value, codec, skipped)
        if line is not None:
            yield line
    for key, _fingerprint, value in () if retired is None else retired.entries(held):
        line = _line(key, value, codec, skipped)
        if line is not None:
            yield line


def _line(key: str, value: bytes, codec: Codec, skipped: Skipped | None) -> bytes | None:
    try:
        entry = codec.unpack(value)
    except CorruptEntry:  # a time no date can name among them: it cannot say when
        if skipped is not None:
            skipped.count += 1
        return None
    record = to_record(key, entry)
    refused = refusal(record)
    if refused is not None:
        if skipped is not None:
            skipped.refused.append(refused)
        return None
    return orjson.dumps(record) + b"\n"


def refusal(record: dict[str, Any]) -> str | None:
    """Why the readers of cassettes (the proxy, the plugin, import, diff) would refuse this
    line, or None. The store holds what the upstream answered, and a cassette's checks are
    stricter than a HIT's (an answer naming a key twice is served live as the upstream sent
    it): written as it is, one such answer made the whole cassette unloadable, so a recording
    session wrote a cassette its own replay, `serve --cassette` and `import` then refused."""
    try:
        from_record(record, "")
    except (KeyError, TypeError, ValueError, ProxyError) as exc:
        return f"{record['route']} (model {terminal.shown(str(record['model']))[:256]!r}): {exc}"
    return None


def to_record(key: str, entry: Entry) -> dict[str, Any]:
    record: dict[str, Any] = {"format": FORMAT, "key": key}
    record.update({name: getattr(entry, name) for name in _META})
    record["recorded_at"] = datetime.fromtimestamp(entry.stored_at, UTC).isoformat(
        timespec="seconds"
    )
    record["request"] = _json_or_text(entry.request)
    if entry.vary:
        record["vary"] = entry.vary
    if entry.request_id:
        record["request_id"] = entry.request_id
    try:
        record["body"] = entry.body.decode()
    except UnicodeDecodeError:
        record["body_base64"] = base64.b64encode(entry.body).decode()
    return record


def _json_or_text(request: bytes) -> Any:
    try:
        return orjson.loads(request)
    except orjson.JSONDecodeError:
        return request.decode(errors="replace")


@dataclass(frozen=True, slots=True)
class Loaded:
    key: str
    entry: Entry
    indexes: tuple[str, ...] = ()  # the id's index keys (`_indexes`), each written a pointer


def from_record(record: dict[str, Any], scope: str) -> Loaded:
    """The entry and its key under `scope` (the target store's tenant partition)."""
    if not isinstance(record, dict):
        raise CassetteError("not a JSON object")
    if type(record.get("format")) is not int or record["format"] != FORMAT:
        raise CassetteError(f"unknown cassette format {_quoted(record.get('format'))}")
    _check_fields(record)
    for name, kind in _TYPES.items():
        value = record[name]
        # JSON's true is no number, though Python's bool is an int
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise CassetteError(f"{name!r} has the wrong type")
    for name, kind in _OPTIONAL_TYPES.items():
        if name in record and not isinstance(record[name], kind):
            raise CassetteError(f"{name!r} has the wrong type")
    request = record["request"]
    body = canonical.parse_body(_request_bytes(request))
    if isinstance(request, str):
        _unambiguous(request, "'request' ")
    if "body_base64" in record:
        answer = base64.b64decode(record["body_base64"], validate=True)
    else:
        answer = str(record["body"]).encode()
        _unambiguous_answer(answer, record["stream"] is True)
    raw_request = request.encode() if isinstance(request, str) else canonical.dumps(request)
    hidden = sealed(body, loaded=True)  # a token a line holds is never keyed nor kept
    if hidden is not None:
        body, raw_request = hidden, canonical.dumps(hidden)
    meta = {name: record[name] for name in _META}
    meta["query"] = split_query(meta["query"])[0]  # a credential is never keyed nor kept
    meta["stored_at"] = min(_checked(meta, body), time.time())
    vary = record.get("vary", "")
    if vary and not _DIGEST.fullmatch(vary):
        raise CassetteError("'vary' is not the SHA-256 of a request's keyed headers")
    request_id = record.get("request_id", "")
    if request_id and not is_request_id(request_id):
        raise CassetteError("'request_id' is not a request id (a short printable token)")
    request_kept = canonical.compact(raw_request)
    entry = Entry(body=answer, request=request_kept, vary=vary, request_id=request_id, **meta)
    key = canonical.request_key(entry.route, scope, entry.namespace, body, entry.query, vary)
    return Loaded(key, entry, _indexes(entry, scope, body))


def _request_bytes(request: dict[str, Any] | str) -> bytes:
    """The line's request as the bytes a client would have sent, for `parse_body` to read as it
    reads every request body: one object, finite numbers, nesting within MAX_DEPTH. Read as
    it stood, a request nested a thousand levels deep made every reader recurse until Python
    gave up."""
    if isinstance(request, str):
        return request.encode()
    try:
        return orjson.dumps(request)
    except TypeError:  # orjson stops past 254 levels
        raise CassetteError("'request' nests deeper than a request may") from None


def _checked(meta: dict[str, Any], body: dict[str, Any]) -> float:
    """The line's stored_at, once what the line says of its answer is what a live answer to
    its request would have said: the key is recomputed from the request alone, so a model,
    stream flag or fingerprint of the line's own choosing would teach another model's
    fingerprint, or serve one kind of answer to the other kind of request. Its values reach
    response headers, metrics and exports as they are, so each is bounded as the proxy bounds
    the upstream's. A stored_at from the future would be served past --ttl: `from_record`
    is taken as now."""
    _routable(meta["route"])
    if len(meta["namespace"]) > MAX_NAMESPACE:
        raise CassetteError(f"'namespace' is longer than {MAX_NAMESPACE} characters")
    if meta["model"] != routes.asked_model(meta["route"], body):
        raise CassetteError("'model' is not the model its request names")
    if not tracked(routes.lineage(meta["model"], meta["route"])):
        raise CassetteError(f"'model' is longer than {MAX_MODEL_NAME} characters")
    if meta["stream"] != routes.streamed(routes.kind(meta["route"]), body):
        raise CassetteError("'stream' does not say what its request asked")
    if not is_fingerprint(meta["fingerprint"]):
        raise CassetteError("'fingerprint' is not a short printable token")
    content_type = meta["content_type"]
    if not _CONTENT_TYPE.fullmatch(content_type) or (
        meta["stream"] and content_type != "text/event-stream"
    ):
        raise CassetteError("'content_type' is not one an answer of its kind can have")
    for name, least in (("prompt_tokens", 0), ("completion_tokens", 0), ("seed", -(2**63))):
        if meta[name] is not None and not least <= meta[name] < 2**63:
            raise CassetteError(f"{name!r} is out of range")
    stored_at = float(meta["stored_at"])
    if not is_dated(stored_at):
        raise CassetteError("'stored_at' is out of range")
    return stored_at


def _routable(route: str) -> None:
    """Refuse a route no request reaches the cache by: a proxy stores nothing under it, so a
    line naming one is no recording, and its entry would be kept and never served. A read's is
    its path as the upstream receives it (`paths.forward_target`)."""
    if reads.is_read(route):
        path = route.removeprefix(reads.PREFIX)
        try:
            plain = paths.forward_target(path) == path and "?" not in path
        except InvalidPath:
            plain = False
        if not plain:
            raise CassetteError("'route' reads a path no request is sent upstream as")
        return
    called = routes.kind(route) in canonical.CACHEABLE_ROUTES
    if route.startswith(routes.DEPLOYMENTS):
        deployment, _, call = route.removeprefix(routes.DEPLOYMENTS).partition("/")
        try:
            called = (
                called
                and call in routes.DEPLOYMENT_CALLS
                and bool(routes.check_deployment(deployment))
            )
        except InvalidPath:
            called = False
    if not called:
        raise CassetteError("'route' is no route the proxy caches")


def _indexes(entry: Entry, scope: str, body: dict[str, Any]) -> tuple[str, ...]:
    """The keys of the pointers to a loaded answer that the upstream keeps by its id, as a
    proxy writes them beside one it stored (`recording.index_response`): a response's, fetched
    by id in replay, and a `store: true` chat completion's; in the target's scope, and the one
    a deletion or an update by any key follows (`responses.everywhere_key`)."""
    kind, version = routes.kind(entry.route), responses.api_version(entry.query)
    found, domain = None, responses.RESPONSE_INDEX
    if kind == routes.RESPONSES:
        found = responses.stored_id(entry.body, entry.stream)
    elif kind == routes.CHAT and body.get("store") is True:
        found, domain = responses.chat_id_of(entry.body, entry.stream), responses.CHAT_INDEX
    if found is None or version is None or not responses.valid_id(found):
        return ()
    return responses.pointer_keys(
        scope, entry.namespace, found, entry.vary, version, entry.query, domain
    )


def _unambiguous(text: bytes | str, what: str) -> None:
    """Refuse JSON naming a key twice at any depth: orjson (the key, the answer served) keeps the
    last copy while a reviewer reading the line sees the first, so one line could pass review
    with one request or answer and replay another. Call once the line's depth is bounded."""
    try:
        canonical.reject_duplicate_keys(text)
    except canonical.DuplicateKey as exc:
        raise CassetteError(
            f"{what}names the key {_quoted(exc.name)} more than once: readers disagree on which "
            "copy counts"
        ) from None


def _unambiguous_answer(answer: bytes, stream: bool) -> None:
    """Refuse an answer whose JSON (the whole body, or each event's data) names a key twice:
    it is served as it stands, and the client's parser (as `cassette diff` and the id index)
    keeps the last copy where a reviewer reads the first. An answer that is no JSON has no keys
    to read twice. Nor is one nested deeper than Python's json reads (orjson reads 1024 levels,
    it some 1000) checked: `cassette diff` compares such answers, so they load."""
    for payload in sse_wire.payloads(answer) if stream else (answer,):
        try:
            orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        with contextlib.suppress(RecursionError):
            _unambiguous(payload, "'body' ")


def _check_fields(record: dict[str, Any]) -> None:
    for name in record:
        if name in _FIELDS:
            continue
        if any(word in name.lower() for word in _SECRET_FIELDS):
            raise CassetteError(
                f"field {_quoted(name)}: a cassette never holds headers or credentials; remove it, "
                "and revoke the credential if it was real"
            )
        raise CassetteError(f"unknown field {_quoted(name)}")


def _quoted(value: Any) -> str:
    """A line's own value in an error message, cut short: the message reaches a terminal."""
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:79] + "…"


def parse(text_lines: Iterable[bytes], scope: str) -> list[Loaded]:
    """Every entry of a cassette, oldest first; a bad line fails the whole load."""
    loaded = []
    for number, line in enumerate(text_lines, start=1):
        if not line.strip():
            continue
        try:
            loaded.append(from_record(orjson.loads(line), scope))
            _unambiguous(line, "")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, ProxyError) as exc:
            raise CassetteError(f"cassette line {number}: {exc}") from None
    return sorted(loaded, key=lambda item: item.entry.stored_at)


async def load(store: Store, entries: list[Loaded], codec: Codec) -> int:
    """Write the entries, then teach the store each model's fingerprints in time order. An
    answer recorded before the model's current fingerprint last answered (a cassette loaded a
    second time, an old one into a live store) is history the store has passed: it may add a
    fingerprint but never moves the current one back, which logged rotations the upstream never
    made (and, loaded three times, took the model for alternating)."""
    since: dict[str, float] = {}
    for item in entries:
        entry = item.entry
        lineage = routes.lineage_of(entry.model, entry.route, entry.vary, entry.query)
        labels = labelled(entry.namespace, entry.model, lineage)
        await store.put(Write(item.key, entry.fingerprint, codec.pack(entry), 0, labels))
        pointer = responses.index_value(item.key, entry.fingerprint)
        for index in item.indexes:
            await store.put(Write(index, responses.INDEX_FINGERPRINT, pointer, 0, labels))
        if lineage not in since:
            known = await store.fingerprints(lineage)
            since[lineage] = (known and known.last_seen(known.current)) or float("-inf")
        moves = entry.stored_at > since[lineage]
        await store.observe_fingerprint(lineage, entry.fingerprint, entry.stored_at, moves=moves)
    return len(entries)


def index_keys(loaded: Iterable[Loaded]) -> set[str]:
    """The keys of every id index the loaded answers write (`_indexes`)."""
    return {index for item in loaded for index in item.indexes}


def read(path: str, scope: str) -> list[Loaded]:
    with opened(path) as handle:
        return parse(bounded(handle), scope)


def opened(path: str) -> IO[bytes]:
    """A cassette opened for reading, if it is a regular file: opening a named pipe would wait
    for a writer that may never come, and a device or a directory is no recording."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise CassetteError(f"{path!r} is not a regular file (a directory, a device or a pipe)")
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def bounded(handle: IO[bytes], limit: int = MAX_LINE, total: int = MAX_CASSETTE) -> Iterator[bytes]:
    """The lines of a file, refusing one over `limit` bytes before it is read whole, and the
    file once over `total` bytes in all (a regular file's size is known before the first)."""
    too_large = f"larger than {total} bytes in all; split it (its lines are independent)"
    try:
        size = os.fstat(handle.fileno())
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        size = None
    if size is not None and stat.S_ISREG(size.st_mode) and size.st_size > total:
        raise CassetteError(f"the cassette is {too_large}")
    number = read = 0
    while line := handle.readline(limit + 1):
        number += 1
        read += len(line)
        if len(line) > limit:
            raise CassetteError(f"cassette line {number}: longer than {limit} bytes")
        if read > total:
            raise CassetteError(f"cassette line {number}: the cassette is {too_large}")
        yield line


def records(path: str) -> list[dict[str, Any]]:
    """Every line of a cassette as the record it holds, each checked as loading checks it."""
    found = []
    with opened(path) as handle:
        for number, line in enumerate(bounded(handle), start=1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
                from_record(record, "")
                _unambiguous(line, "")
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, ProxyError) as exc:
                raise CassetteError(f"cassette line {number}: {exc}") from None
            found.append(record)
    return found
