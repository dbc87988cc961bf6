"""`repro-proxy export | import`: move stored answers between stores through cassette files;
`repro-proxy cassette diff`: compare two recordings.

Export and import go either straight to a shared store (`--store redis://…`), or through a
running proxy's admin routes (`--url`, `--admin-token`): the only way to reach a `memory://`
proxy's answers. A `memory://` store of the command's own would start empty and vanish at exit,
so it is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import orjson

from proxy import values
from proxy.config import mask_password, store_failure
from proxy.core import policy
from proxy.core.codec import Codec
from proxy.store import cassette, cassette_write, open_store
from proxy.store.base import Selector, Store, StoreError
from proxy.store.encrypted import EncryptedStore, key_id, parse_keys, sealed_dictionary
from proxy.store.redis import RedisStore
from proxy.tools import remote
from proxy.tools.admin_cli import (
    MODEL_HELP,
    Refused,
    add_connection_arguments,
    add_filter,
    connect,
)
from proxy.tools.output import fail, plural

if TYPE_CHECKING:
    import httpx

BATCH_BYTES = 4 * 1024 * 1024
"""Cassette bytes per import request: well under the proxy's default --max-body."""


def add_commands(commands: Any) -> None:
    export = commands.add_parser("export", help="write stored answers to a JSONL cassette")
    _source_arguments(export, "seconds the export may go silent between two reads")
    add_filter(export, "--namespace", "only answers of this X-Repro-Namespace")
    add_filter(export, "--model", MODEL_HELP)
    export.add_argument("--output", "-o", default="-", help="file to write (default stdout)")
    load = commands.add_parser("import", help="load a JSONL cassette into a store or a proxy")
    _source_arguments(load, "seconds to wait for the answer to each batch of the cassette")
    load.add_argument("cassette", help="the cassette file")
    load.add_argument(
        "--cache-scope",
        choices=[scope.value for scope in policy.CacheScope],
        default=os.environ.get("REPRO_CACHE_SCOPE"),
        help="scope to key the answers for (env REPRO_CACHE_SCOPE; default shared, or with "
        "--url the proxy's own)",
    )
    # Secrets are read from the environment too: an argument is visible to every local user.
    load.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY"),
        help="with --cache-scope key: the key the answers are for (env OPENAI_API_KEY)",
    )
    load.add_argument(
        "--secret",
        default=os.environ.get("REPRO_SECRET") or None,
        help="with --cache-scope key and --store: the proxies' --secret (env REPRO_SECRET)",
    )
    files = commands.add_parser("cassette", help="work with cassette files")
    actions = files.add_subparsers(dest="cassette_command", required=True)
    diff = actions.add_parser(
        "diff", help="compare two recordings of the same requests (exit 1 when anything changed)"
    )
    diff.add_argument("old", help="the earlier cassette")
    diff.add_argument("new", help="the later cassette")
    diff.add_argument("--json", action="store_true", help="a JSON report instead of a table")


def _source_arguments(parser: argparse.ArgumentParser, waits: str) -> None:
    parser.add_argument(
        "--store",
        default=None,
        help="a shared store's URL, redis://… or rediss://… (env REPRO_STORE)",
    )
    parser.add_argument(
        "--encryption-key",
        action="append",
        help="with --store: the store's --encryption-key, if it has one; repeat the flag or "
        "separate with commas (env REPRO_ENCRYPTION_KEY)",
    )
    add_connection_arguments(parser, timeout=300, waits=waits, url_default=None)


def run(args: argparse.Namespace) -> int:
    if args.command == "cassette":
        from proxy.tools import cassette_diff  # rich, only when the command runs

        return cassette_diff.main(args)
    # Appended to a default, the flags would add to the variable's keys instead of replacing them.
    given = args.encryption_key
    args.encryption_key = ",".join(given) if given else os.environ.get("REPRO_ENCRYPTION_KEY")
    try:
        target = _target(args)
        if args.encryption_key:
            _check_keys(args.encryption_key)
        if args.command == "export" and args.output != "-":
            _check_writable(args.output)
        if args.command == "import":  # the flags first, then the file they are about
            _check_scope(_scope(args))
            if args.secret is not None:
                args.secret = _checked_secret(args.secret)
            if _scope(args) == "key" and not args.api_key:
                raise Refused(
                    "--cache-scope key needs --api-key (or OPENAI_API_KEY): "
                    "the key the answers are for"
                )
            _check_readable(args.cassette)
    except Refused as exc:
        fail(args.command, exc)
        return 2
    try:
        if target is None:
            count = _export_url(args) if args.command == "export" else _import_url(args)
        else:
            work = _export(args, target) if args.command == "export" else _import(args, target)
            count = asyncio.run(work)
    except (Refused, cassette.CassetteError) as exc:  # the operator's input: as `cassette diff`
        fail(args.command, exc)
        return 2
    except StoreError as exc:
        url = target or ""  # only a store of the command's own raises it
        fail(args.command, f"the store {mask_password(url)}: {store_failure(exc, url)}")
        return 1
    except (OSError, ValueError) as exc:
        fail(args.command, exc)
        return 1
    print(f"{args.command}ed {plural(count, 'answer')}", file=sys.stderr)
    return 0


def _check_keys(text: str) -> None:
    """Named, never shown."""
    try:
        parse_keys(text)
    except ValueError as exc:
        raise Refused(f"--encryption-key / REPRO_ENCRYPTION_KEY: {exc}") from None


def _checked_secret(text: str) -> str:
    """Read as `serve` reads it, or the answers would be keyed for no proxy; never shown."""
    try:
        return values.secret(text)
    except ValueError as exc:
        raise Refused(f"--secret / REPRO_SECRET: {exc}") from None


def _check_writable(path: str) -> None:
    """Before anything is fetched: a directory would fail only once the export is complete, and
    a device or a pipe (/dev/null, /dev/stdout) would be replaced by the new file."""
    try:
        values.cassette(path)
    except ValueError as exc:
        raise Refused(f"--output: {exc}, got {path!r} (- writes to stdout)") from None


def _check_scope(scope: str | None) -> None:
    """REPRO_CACHE_SCOPE is the flag's default, which argparse never checks against choices."""
    known = [scope.value for scope in policy.CacheScope]
    if scope is not None and scope not in known:
        raise Refused(
            f"--cache-scope / REPRO_CACHE_SCOPE: expected {' or '.join(known)}, got {scope!r}"
        )


def _check_readable(path: str) -> None:
    """The cassette is read before anything is asked of a store or a proxy."""
    try:
        cassette.opened(path).close()
    except OSError as exc:
        raise Refused(f"cassette {path!r}: {(exc.strerror or str(exc)).lower()}") from None
    except cassette.CassetteError as exc:
        raise Refused(f"cassette: {exc}") from None


def _target(args: argparse.Namespace) -> str | None:
    """The store URL to open, or None to go through the running proxy at --url."""
    if args.store and args.url:
        raise Refused("give --store or --url, not both")
    if args.url:
        return None
    store = args.store or os.environ.get("REPRO_STORE")
    if store and not store.startswith("memory:"):
        return str(store)
    if args.store is None and os.environ.get("REPRO_URL"):
        return None
    if not store:
        raise Refused(
            "name where the answers are: --url http://HOST:PORT (a running proxy, with "
            "--admin-token) or --store redis://… (its Redis)"
        )
    raise Refused(
        f"--store {store} would be an empty store of this command's own; reach a running "
        "proxy with --url (and --admin-token), or its Redis with --store redis://…"
    )


def _scope(args: argparse.Namespace) -> str | None:
    return str(args.cache_scope) if args.cache_scope else None


async def _open(args: argparse.Namespace, url: str) -> Store:
    store = await open_store(url)
    try:
        await _check_sealed(args, store)
    except BaseException:
        await store.close()
        raise
    if args.encryption_key:
        return EncryptedStore(store, parse_keys(args.encryption_key))
    return store


async def _check_sealed(args: argparse.Namespace, store: Store) -> None:
    """Before anything is read or written, by the key ids its encrypting proxies left (see
    proxy.store.encrypted), or in a store sealed before them, by its dictionary: without one of
    their keys an import would write answers they read as absent, in the clear, and an export
    would read none."""
    if not isinstance(store, RedisStore):
        return
    given = [key_id(key) for key in parse_keys(args.encryption_key)] if args.encryption_key else []
    sealers, known = await store.sealers(None, given)
    if not sealers and (given or not sealed_dictionary(await store.dictionary(None))):
        return
    if not given:
        raise Refused(
            "the store's proxies encrypt its answers: give their key with --encryption-key "
            "(or REPRO_ENCRYPTION_KEY)"
        )
    if not known:
        raise Refused(
            "--encryption-key / REPRO_ENCRYPTION_KEY: none of the keys given is one the store's "
            "proxies encrypt with"
        )


@contextlib.contextmanager
def _output(path: str) -> Iterator[IO[bytes]]:
    """stdout, or a file that replaces `path` only once the export is complete: a failed or
    cut export (a server that stops half-way) leaves what was there."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with cassette_write.replacing(path) as out:
        yield out


async def _codec(store: Store) -> Codec:
    """A codec that reads (and writes) with the store's dictionary, if it has one."""
    codec = Codec()
    dictionary = await store.dictionary(None)
    if dictionary is not None:
        codec.use(dictionary)
    return codec


async def _export(args: argparse.Namespace, url: str) -> int:
    store = await _open(args, url)
    selector = Selector(namespace=args.namespace, model=args.model)
    count = 0
    skipped = cassette.Skipped()
    try:
        with _output(args.output) as out:
            async for line in cassette.lines(store, selector, await _codec(store), skipped):
                out.write(line)
                count += 1
    finally:
        await store.close()
    _left_out(args, store.unopened if isinstance(store, EncryptedStore) else 0, skipped.count)
    for why in skipped.refused:
        fail(args.command, f"left out a stored answer no cassette may hold: {why}")
    return count


def _left_out(args: argparse.Namespace, unopened: int, unread: int) -> None:
    """What an export passed over and why: a store of answers it could not read is no backup."""
    left = "left out {} it cannot read: {}"
    if unopened:
        keys = "the keys given open none of them (--encryption-key / REPRO_ENCRYPTION_KEY)"
        fail(args.command, left.format(plural(unopened, "stored answer"), keys))
    if unread:
        why = "written by another version"
        if not args.encryption_key:
            why = f"give the store's --encryption-key (or REPRO_ENCRYPTION_KEY), or they were {why}"
        fail(args.command, left.format(plural(unread, "stored answer"), why))


async def _import(args: argparse.Namespace, url: str) -> int:
    store = await _open(args, url)
    try:
        scope = policy.CacheScope(_scope(args) or "shared")
        secret = args.secret.encode() if args.secret else await store.secret(os.urandom(32))
        entries = cassette.read(args.cassette, policy.cache_scope(args.api_key, scope, secret))
        return await cassette.load(store, entries, await _codec(store))
    finally:
        await store.close()


def _export_url(args: argparse.Namespace) -> int:
    """The proxy's export, streamed to the output as sent (text decoding could split inside a
    line): a store's worth may be long, so only silence (--timeout between reads) ends it.
    Asked and read uncompressed: the HTTP client inflates a compressed read whole, and 64 KiB
    of zstd can say 2 GiB."""
    import httpx

    base, headers = connect(args)
    headers["Accept-Encoding"] = "identity"
    params = {k: v for k, v in (("namespace", args.namespace), ("model", args.model)) if v}
    url = f"{base}/admin/export"
    count = 0
    try:
        with (
            httpx.Client(
                timeout=args.timeout,
                trust_env=remote.trusts_environment(url),
                verify=remote.trust(),
            ) as web,
            web.stream("GET", url, params=params, headers=headers) as r,
            _output(args.output) as out,
        ):
            if r.status_code != 200:
                raise OSError(remote.reason(r.status_code, _start(r)))
            coding = r.headers.get("Content-Encoding", "identity").strip().lower()
            if coding not in ("", "identity"):
                raise OSError(f"the export came in an encoding it was not asked in: {coding!r}")
            for chunk in r.iter_raw():
                out.write(chunk)
                count += chunk.count(b"\n")
    except httpx.HTTPError as exc:
        raise OSError(f"{remote.shown_url(url)}: {type(exc).__name__}: {exc}") from None
    return count


def _start(response: httpx.Response, limit: int = 4096) -> bytes:
    """The first bytes of an error answer: enough for its message, never all of it."""
    start = bytearray()
    for chunk in response.iter_raw():
        start += chunk
        if len(start) >= limit:
            break
    return bytes(start[:limit])


def _import_url(args: argparse.Namespace) -> int:
    import httpx

    base, headers = connect(args)
    url = f"{base}/admin/import"
    headers |= {"Content-Type": "application/x-ndjson"}
    if args.api_key:
        try:
            headers["X-Repro-Api-Key"] = remote.header_safe(args.api_key, "the API key")
        except remote.Unusable as exc:
            raise Refused(str(exc)) from None
    params = {"cache_scope": scope} if (scope := _scope(args)) else {}
    count = 0
    trust_env = remote.trusts_environment(url)
    with httpx.Client(
        follow_redirects=False, timeout=args.timeout, trust_env=trust_env, verify=remote.trust()
    ) as client:
        for batch in _batches(cassette.read(args.cassette, policy.SHARED)):
            try:
                status, body = remote.fetch(
                    "POST", url, headers=headers, params=params, content=batch,
                    timeout=args.timeout, client=client,
                )  # fmt: skip
                if status != 200:
                    raise remote.Unusable(remote.reason(status, body))
                imported = remote.parsed(body)
                if not isinstance(imported, dict) or type(imported.get("imported")) is not int:
                    raise remote.Unusable("the answer is not what a repro-proxy sends")
            except remote.Unusable as exc:
                raise OSError(f"{remote.shown_url(url)}: {exc}") from None
            count += imported["imported"]
    return count


def _batches(entries: list[cassette.Loaded]) -> Iterator[bytes]:
    """The cassette, checked and in time order, cut in bodies of about BATCH_BYTES."""
    batch = bytearray()
    for item in entries:
        line = orjson.dumps(cassette.to_record(item.key, item.entry)) + b"\n"
        if batch and len(batch) + len(line) > BATCH_BYTES:
            yield bytes(batch)
            batch.clear()
        batch += line
    if batch:
        yield bytes(batch)
