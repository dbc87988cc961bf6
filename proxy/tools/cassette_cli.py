"""`repro-proxy export | import`: move stored answers between stores through cassette files."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from proxy.core import policy
from proxy.core.codec import Codec
from proxy.store import cassette, open_store
from proxy.store.base import Selector, Store
from proxy.store.encrypted import EncryptedStore, parse_keys


def add_commands(commands: Any) -> None:
    export = commands.add_parser("export", help="write stored answers to a JSONL cassette")
    _store_arguments(export)
    export.add_argument("--namespace", help="only this X-Repro-Namespace")
    export.add_argument("--model", help="only this model")
    export.add_argument("--output", "-o", default="-", help="file to write (default stdout)")
    load = commands.add_parser("import", help="load a JSONL cassette into a store")
    _store_arguments(load)
    load.add_argument("cassette", help="the cassette file")
    load.add_argument(
        "--cache-scope",
        choices=[scope.value for scope in policy.CacheScope],
        default=os.environ.get("REPRO_CACHE_SCOPE", "shared"),
        help="scope to key the entries for (env REPRO_CACHE_SCOPE, default shared)",
    )
    load.add_argument("--api-key", help="with --cache-scope key: the key the entries are for")
    load.add_argument("--secret", help="with --cache-scope key: the proxies' --secret")


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=os.environ.get("REPRO_STORE", "memory://"),
        help="store URL (env REPRO_STORE)",
    )
    parser.add_argument(
        "--encryption-key",
        default=os.environ.get("REPRO_ENCRYPTION_KEY"),
        help="the store's --encryption-key, if it has one (env REPRO_ENCRYPTION_KEY)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_export(args) if args.command == "export" else _import(args))
    except (OSError, ValueError) as exc:
        print(f"repro-proxy {args.command}: {exc}", file=sys.stderr)
        return 1


async def _open(args: argparse.Namespace) -> Store:
    store = await open_store(args.store)
    if args.encryption_key:
        return EncryptedStore(store, parse_keys(args.encryption_key))
    return store


async def _codec(store: Store) -> Codec:
    """A codec that reads (and writes) with the store's dictionary, if it has one."""
    codec = Codec()
    dictionary = await store.dictionary(None)
    if dictionary is not None:
        codec.use(dictionary)
    return codec


async def _export(args: argparse.Namespace) -> int:
    store = await _open(args)
    selector = Selector(namespace=args.namespace, model=args.model)
    try:
        out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
        count = 0
        async for line in cassette.lines(store, selector, await _codec(store)):
            out.write(line)
            count += 1
        out.flush()
        if out is not sys.stdout.buffer:
            out.close()
    finally:
        await store.close()
    print(f"exported {count} answers", file=sys.stderr)
    return 0


async def _import(args: argparse.Namespace) -> int:
    store = await _open(args)
    try:
        scope = policy.CacheScope(args.cache_scope)
        secret = args.secret.encode() if args.secret else await store.secret(os.urandom(32))
        entries = cassette.read(args.cassette, policy.cache_scope(args.api_key, scope, secret))
        count = await cassette.load(store, entries, await _codec(store))
    finally:
        await store.close()
    print(f"imported {count} answers", file=sys.stderr)
    return 0
