"""A cassette written: one answer per request and fingerprint, sorted, the file replaced whole.

Lines come from a store (`write`) or from several recordings merged (`merged`, the pytest
plugin's workers); the file is replaced only once the new one is complete, and never through a
link someone planted (`replacing`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from typing import IO, Any

import orjson

from proxy.core import canonical
from proxy.core.codec import Codec
from proxy.store.base import Selector, Store
from proxy.store.cassette import Skipped, lines
from proxy.store.retired import Retired


def identity(record: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """What was asked: the same request recorded twice has the same identity (the same body
    with other keyed headers is another request)."""
    request = record.get("request")
    asked = request if isinstance(request, str) else canonical.dumps(request).decode()
    route, namespace, query = (str(record[name]) for name in ("route", "namespace", "query"))
    return (route, namespace, query, asked, str(record.get("vary", "")))


def _order(record: dict[str, Any]) -> tuple[Any, ...]:
    route, namespace, query, asked, vary = identity(record)
    model, fingerprint = str(record["model"]), str(record["fingerprint"])
    return (route, model, namespace, query, asked, vary, fingerprint)


def merged(batches: Iterable[Iterable[bytes]]) -> list[bytes]:
    """Lines of several recordings as one cassette: one answer per request and fingerprint (the
    earliest recorded), sorted."""
    chosen: dict[tuple[Any, ...], tuple[float, bytes]] = {}
    for batch in batches:
        for line in batch:
            record = orjson.loads(line)
            slot = _order(record)
            stored_at = float(record["stored_at"])
            if slot not in chosen or stored_at < chosen[slot][0]:
                chosen[slot] = (stored_at, line if line.endswith(b"\n") else line + b"\n")
    return [chosen[slot][1] for slot in sorted(chosen)]


def save(path: str, batch: Iterable[bytes]) -> int:
    """Write the lines sorted to `path`, replacing it only once the new file is complete."""
    sorted_lines = merged([batch])
    with replacing(path) as handle:
        handle.writelines(sorted_lines)
    return len(sorted_lines)


@contextlib.contextmanager
def replacing(path: str) -> Iterator[IO[bytes]]:
    """A new file that replaces `path` once written whole; a failure leaves what was there.

    It is created under a name no one can have planted (random, exclusive, never through a
    symlink), so a link left in a checkout or a shared directory cannot turn the write onto
    another file; a link at `path` itself is replaced, not followed. A file being replaced
    keeps its permissions, from its creation on (whoever opens a file keeps reading it through
    a later chmod); a new one is its writer's alone (0600, less if the umask says so): it holds
    prompts and answers, an export every tenant's. The temporary name is the file's cut to
    NAME_MAX in bytes, not characters: 200 two-byte characters were a name the system refuses,
    and the recording was lost at exit."""
    folder, name = os.path.split(os.path.abspath(path))
    short = os.fsdecode(os.fsencode(name)[:200])  # a character cut in two stays its bytes
    temporary = os.path.join(folder, f".{short}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    kept = _kept_mode(path)
    descriptor = os.open(temporary, flags, 0o600 if kept is None else kept & 0o777)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            if kept is not None:  # what the umask took off the kept mode
                os.fchmod(handle.fileno(), kept)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _kept_mode(path: str) -> int | None:
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    return stat.S_IMODE(found.st_mode) if stat.S_ISREG(found.st_mode) else None


async def write(
    store: Store,
    path: str,
    codec: Codec,
    skipped: Skipped | None = None,
    retired: Retired | None = None,
) -> int:
    """Write every stored answer, and those a recording kept past their deletion (`retired`),
    to `path` (see `save`)."""
    return save(path, [line async for line in lines(store, Selector(), codec, skipped, retired)])
