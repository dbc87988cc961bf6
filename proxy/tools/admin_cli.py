"""`repro-proxy stats | fingerprints | purge`: the admin routes, for operators without curl.

The parser is built for every command, `serve` included, so httpx is imported only when one of
these commands runs. Each prints a table on a terminal and JSON with `--json` or when piped.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from proxy import values
from proxy.core.terminal import shown
from proxy.tools import remote
from proxy.tools.output import fail, plural, print_json, print_table, size, wants_json

DEFAULT_URL = "http://127.0.0.1:8080"


class Refused(Exception):
    """The command cannot do what was asked; the message says which option to change."""


class Once(argparse.Action):
    """A filter that selects one value: given twice it is refused (status 2), where argparse
    would keep the last value and the command quietly select less than its line reads as."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any,
        option: str | None = None,
    ) -> None:  # fmt: skip
        if getattr(namespace, self.dest) is not None:
            raise argparse.ArgumentError(
                self, "may be given once: it selects one value (run the command once per value)"
            )
        setattr(namespace, self.dest, value)


MODEL_HELP = "only answers of this model, whatever their lineage, or of the lineage named"


def add_filter(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    parser.add_argument(flag, action=Once, help=f"{help_text} (once)")


def add_connection_arguments(
    parser: argparse.ArgumentParser,
    timeout: float = 30,
    waits: str = "seconds to wait for the whole answer",
    url_default: str | None = DEFAULT_URL,
) -> None:
    """--url, --admin-token and --timeout, as every command that talks to a running proxy
    takes them; `waits` says what the timeout bounds, which differs for streamed commands;
    a command that may also open a store has no default URL (`url_default` None)."""
    default = f", default {url_default}" if url_default else ""
    parser.add_argument(
        "--url",
        default=None,
        help=f"the running proxy's address, without /v1 (env REPRO_URL{default})",
    )
    parser.add_argument(
        "--admin-token",
        default=None,
        help="the proxy's --admin-token, sent as a bearer token (env REPRO_ADMIN_TOKEN)",
    )
    parser.add_argument(
        "--timeout",
        type=values.argument(values.positive_seconds),
        default=timeout,
        help=f"{waits} (default {timeout:g})",
    )


def add_commands(commands: Any) -> None:
    """Register the operator subcommands on the main parser's subparsers."""
    for name, help_text in (
        ("stats", "answers and bytes stored, hits and misses of a running proxy"),
        ("fingerprints", "current fingerprint and history per model of a running proxy"),
        ("purge", "delete stored answers by namespace, model and/or fingerprint"),
    ):
        parser = commands.add_parser(name, help=help_text, description=help_text)
        add_connection_arguments(parser, timeout=300 if name == "purge" else 30)
        parser.add_argument(
            "--json", action="store_true", help="print JSON (the default when stdout is not a TTY)"
        )
        if name == "purge":
            add_filter(parser, "--namespace", "only answers of this X-Repro-Namespace")
            add_filter(parser, "--model", MODEL_HELP)
            add_filter(parser, "--fingerprint", "only answers with this system_fingerprint")
            parser.add_argument("--all", action="store_true", help="purge every stored answer")
            parser.add_argument(
                "--dry-run", action="store_true", help="only count what would be purged"
            )


def base_url(args: argparse.Namespace) -> str:
    url = str(args.url or os.environ.get("REPRO_URL") or DEFAULT_URL).rstrip("/")
    try:
        values.proxy_url(url)
    except ValueError as exc:
        raise Refused(f"--url / REPRO_URL: {exc}, got {remote.shown_url(url)!r}") from None
    return url


def admin_headers(args: argparse.Namespace) -> dict[str, str]:
    token = (args.admin_token or os.environ.get("REPRO_ADMIN_TOKEN") or "").strip()
    if not token:
        raise Refused(
            "no admin token: pass --admin-token or set REPRO_ADMIN_TOKEN to the proxy's "
            "--admin-token"
        )
    try:
        return {"Authorization": f"Bearer {remote.header_safe(token, 'the admin token')}"}
    except remote.Unusable as exc:
        raise Refused(str(exc)) from None


def connect(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """The base URL and the admin headers, once the operator was warned of a token about to
    cross a network in the clear."""
    url, headers = base_url(args), admin_headers(args)
    warning = remote.cleartext_warning(url, "the admin token")
    if warning is not None:
        print(shown(warning), file=sys.stderr)
    return url, headers


def run(args: argparse.Namespace) -> int:
    try:
        base, headers = connect(args)
        body = _selector(args) if args.command == "purge" else None
    except Refused as exc:
        fail(args.command, exc)
        return 2
    url = f"{base}/admin/{args.command}"
    try:
        method = "GET" if body is None else "POST"
        status, answer = remote.fetch(method, url, headers=headers, json=body, timeout=args.timeout)
        if status != 200:
            raise remote.Unusable(remote.reason(status, answer))
        found = remote.parsed(answer)
        if wants_json(args.json):
            print_json(found)
        else:
            shape_checked(_SHOW[args.command], found)
    except remote.Unusable as exc:
        fail(args.command, f"{remote.shown_url(url)}: {exc}")
        return 1
    return 0


def shape_checked(show: Callable[[Any], None], found: Any) -> None:
    """Show an answer; one not shaped as a repro-proxy's is `Unusable`, not a traceback."""
    try:
        show(found)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise remote.Unusable(
            f"the answer is not what a repro-proxy sends ({type(exc).__name__})"
        ) from None


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
    stored = f"{plural(stats['entries'], 'answer')}, {size(stats['bytes'])}"
    if raw := stats.get("raw_bytes"):
        stored += f" ({size(raw)} uncompressed)"
    rows = [
        ("stored", stored),
        ("hits", plural(stats["hits"], "hit")),
        ("misses", plural(stats["misses"], "miss", "misses")),
        ("hit ratio", "n/a" if ratio is None else f"{ratio:.1%}"),
        ("tokens saved", plural(stats["tokens_saved"], "token")),
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
