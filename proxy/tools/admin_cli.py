"""`repro-proxy stats | fingerprints | purge`: the admin routes, for operators without curl.

The parser is built for every command, `serve` included, so httpx is imported only when one of
these commands runs. Each prints a table on a terminal and JSON with `--json` or when piped.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxy.tools.output import plural, print_json, print_table, size, wants_json

if TYPE_CHECKING:
    import httpx

DEFAULT_URL = "http://127.0.0.1:8080"


class Refused(Exception):
    """The command cannot do what was asked; the message says which option to change."""


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--url and --admin-token, as every command that talks to a running proxy takes them."""
    parser.add_argument(
        "--url",
        default=None,
        help=f"the running proxy's base URL (env REPRO_URL, default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--admin-token",
        default=None,
        help="the proxy's --admin-token, sent as a bearer token (env REPRO_ADMIN_TOKEN)",
    )


def add_commands(commands: Any) -> None:
    """Register the operator subcommands on the main parser's subparsers."""
    for name, help_text in (
        ("stats", "answers and bytes stored, hits and misses of a running proxy"),
        ("fingerprints", "current fingerprint and history per model of a running proxy"),
        ("purge", "delete stored answers by namespace, model and/or fingerprint"),
    ):
        parser = commands.add_parser(name, help=help_text, description=help_text)
        add_connection_arguments(parser)
        parser.add_argument(
            "--json", action="store_true", help="print JSON (the default when stdout is not a TTY)"
        )
        if name == "purge":
            parser.add_argument("--namespace", help="only answers of this X-Repro-Namespace")
            parser.add_argument("--model", help="only answers of this model")
            parser.add_argument("--fingerprint", help="only answers with this system_fingerprint")
            parser.add_argument("--all", action="store_true", help="purge every stored answer")
            parser.add_argument(
                "--dry-run", action="store_true", help="only count what would be purged"
            )


def base_url(args: argparse.Namespace) -> str:
    url = str(args.url or os.environ.get("REPRO_URL") or DEFAULT_URL).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise Refused(f"--url / REPRO_URL: expected http://… or https://…, got {url!r}")
    return url


def admin_headers(args: argparse.Namespace) -> dict[str, str]:
    token = (args.admin_token or os.environ.get("REPRO_ADMIN_TOKEN") or "").strip()
    if not token:
        raise Refused(
            "no admin token: pass --admin-token or set REPRO_ADMIN_TOKEN to the proxy's "
            "--admin-token"
        )
    return {"Authorization": f"Bearer {token}"}


def reason(response: httpx.Response) -> str:
    """The proxy's one-line error message, or the start of whatever else answered."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


def run(args: argparse.Namespace) -> int:
    import httpx

    try:
        url = f"{base_url(args)}/admin/{args.command}"
        headers = admin_headers(args)
        body = _selector(args) if args.command == "purge" else None
    except Refused as exc:
        print(f"repro-proxy {args.command}: {exc}", file=sys.stderr)
        return 2
    try:
        if body is not None:
            response = httpx.post(url, json=body, headers=headers, timeout=300)
        else:
            response = httpx.get(url, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        print(f"repro-proxy {args.command}: {url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(
            f"repro-proxy {args.command}: HTTP {response.status_code}: {reason(response)}",
            file=sys.stderr,
        )
        return 1
    if wants_json(args.json):
        print_json(response.json())
    else:
        _SHOW[args.command](response.json())
    return 0


def _selector(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"dry_run": args.dry_run}
    for name in ("namespace", "model", "fingerprint"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if args.all:
        body["all"] = True
    elif len(body) == 1:
        raise Refused("name --namespace, --model or --fingerprint, or pass --all to purge all")
    return body


def _show_stats(stats: dict[str, Any]) -> None:
    ratio = stats.get("hit_ratio")
    rows = [
        ("stored", f"{plural(stats['entries'], 'answer')}, {size(stats['bytes'])}"),
        ("hits", plural(stats["hits"], "hit")),
        ("misses", plural(stats["misses"], "miss", "misses")),
        ("hit ratio", "n/a" if ratio is None else f"{ratio:.1%}"),
    ]
    print_table("repro-proxy stats", ("", "value"), rows)


def _show_fingerprints(models: dict[str, Any]) -> None:
    rows = [
        (
            model,
            state["current"],
            state["first_seen"],
            state["last_seen"],
            plural(len(state["history"]), "fingerprint"),
        )
        for model, state in models.items()
    ]
    columns = ("model", "current fingerprint", "first seen", "last seen", "history")
    print_table(f"Fingerprints of {plural(len(models), 'model')}", columns, rows)


def _show_purge(result: dict[str, Any]) -> None:
    if result["dry_run"]:
        print(f"would purge {plural(result['matched'], 'answer')} (dry run)")
    else:
        print(f"purged {plural(result['deleted'], 'answer')}")


_SHOW: dict[str, Callable[[Any], None]] = {
    "stats": _show_stats,
    "fingerprints": _show_fingerprints,
    "purge": _show_purge,
}
