"""`repro-proxy stats | fingerprints | purge`: the admin routes, for operators without curl.

The parser is built for every command, `serve` included, so httpx is imported only when one of
these commands runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import httpx


def add_commands(commands: Any) -> None:
    """Register the operator subcommands on the main parser's subparsers."""
    for name, help_text in (
        ("stats", "entries, bytes and hit ratio of a running proxy"),
        ("fingerprints", "current fingerprint and history per model"),
        ("purge", "delete cached entries by namespace, model and/or fingerprint"),
    ):
        parser = commands.add_parser(name, help=help_text)
        parser.add_argument(
            "--url",
            default=os.environ.get("REPRO_URL", "http://127.0.0.1:8080"),
            help="the proxy's base URL (env REPRO_URL, default http://127.0.0.1:8080)",
        )
        parser.add_argument(
            "--admin-token",
            default=None,
            help="bearer token of /admin/* (env REPRO_ADMIN_TOKEN)",
        )
        if name == "purge":
            parser.add_argument("--namespace")
            parser.add_argument("--model")
            parser.add_argument("--fingerprint")
            parser.add_argument("--all", action="store_true", help="purge every entry")
            parser.add_argument("--dry-run", action="store_true", help="only count")


def run(args: argparse.Namespace) -> int:
    import httpx

    token = args.admin_token or os.environ.get("REPRO_ADMIN_TOKEN", "")
    url = args.url.rstrip("/") + "/admin/" + args.command
    headers = {"Authorization": f"Bearer {token}"}
    try:
        if args.command == "purge":
            response = httpx.post(url, json=_selector(args), headers=headers, timeout=300)
        else:
            response = httpx.get(url, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        print(f"repro-proxy {args.command}: {url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(
            f"repro-proxy {args.command}: HTTP {response.status_code}: {_reason(response)}",
            file=sys.stderr,
        )
        return 1
    sys.stdout.write(orjson.dumps(response.json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _selector(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"dry_run": args.dry_run}
    if args.all:
        body["all"] = True
    for name in ("namespace", "model", "fingerprint"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    return body


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase
