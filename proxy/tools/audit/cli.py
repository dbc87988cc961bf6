"""`repro-proxy check`: its flags, and running the audit from them.

The parser is built for every command, `serve` included, so httpx, rich and the audit's network
and view modules are imported only when the audit runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy import values
from proxy.core.numbers import integer
from proxy.tools.audit.plan import DEFAULT_BASE_URL, DEFAULT_PROMPT, Plan

if TYPE_CHECKING:
    import httpx


def _at_least(low: int) -> Callable[[str], int]:
    expected = f"an integer from {low} to {values.MAX_COUNT}"
    return values.argument(values.ranged(integer, expected, lambda v: low <= v <= values.MAX_COUNT))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `repro-proxy check`; the CLI owns the parser, this module owns the options."""
    add = parser.add_argument
    add(
        "--base-url",
        type=values.argument(values.http_url),
        default=DEFAULT_BASE_URL,
        help=f"the proxy's or an upstream's URL, with /v1 (default {DEFAULT_BASE_URL})",
    )
    add("--api-key", help="API key (default: $OPENAI_API_KEY)")
    add("-n", "--requests", type=_at_least(2), default=10, help="requests per arm (default 10)")
    add("--concurrency", type=_at_least(1), default=4, help="requests in flight (default 4)")
    add("--model", default="gpt-4o-mini", help="chat model (default gpt-4o-mini)")
    add("--prompt", default=DEFAULT_PROMPT, help=f"the user message (default {DEFAULT_PROMPT!r})")
    add("--system", help="an optional system message")
    add(
        "--seed",
        type=values.argument(values.seed),
        default=12345,
        help="seed of the seeded arm (default 12345)",
    )
    add("--max-tokens", type=_at_least(1), default=128, help="per request (default 128)")
    add(
        "--distance",
        choices=("text", "embedding"),
        default="text",
        help="text: normalized edit distance, 0 to 1; embedding: cosine distance (1 - cosine "
        "similarity) of the upstream's embeddings, 0 to 2 (default: text)",
    )
    add(
        "--embedding-model",
        default="text-embedding-3-small",
        help="for --distance embedding (default text-embedding-3-small)",
    )
    add(
        "--timeout",
        type=values.argument(values.positive_seconds),
        default=120.0,
        help="seconds per request, its whole answer included (default 120)",
    )
    add("--json", action="store_true", help="print one JSON object to stdout")
    add("--yes", "-y", action="store_true", help="start without asking for confirmation")


def plan_from_args(ns: argparse.Namespace) -> Plan:
    return Plan(
        base_url=ns.base_url,
        model=ns.model,
        prompt=ns.prompt,
        system=ns.system,
        seed=ns.seed,
        n=ns.requests,
        max_tokens=ns.max_tokens,
        concurrency=ns.concurrency,
        distance=ns.distance,
        embedding_model=ns.embedding_model,
        timeout=ns.timeout,
    )


def _confirmed(skip: bool) -> bool:
    """Ask on a terminal only: a script or CI job (stdin not a TTY) must never hang on a prompt."""
    if skip or not sys.stdin.isatty():
        return True
    print("Proceed? [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _client(ns: argparse.Namespace) -> httpx.AsyncClient:
    import httpx

    from proxy.tools.remote import trust, trusts_environment

    key = ns.api_key or os.environ.get("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=ns.concurrency)
    base_url = ns.base_url.rstrip("/") + "/"
    trust_env = trusts_environment(base_url)
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=ns.timeout,
        limits=limits,
        trust_env=trust_env,
        verify=trust(),
    )


async def run(ns: argparse.Namespace) -> int:
    """`repro-proxy check`: the plan on stderr, the report on stdout, 1 if nothing was measured."""
    from rich.console import Console

    from proxy.tools.audit.network import audit
    from proxy.tools.audit.view import progress, render
    from proxy.tools.output import literal, print_json
    from proxy.tools.remote import Unusable, cleartext_warning, header_safe

    plan, err = plan_from_args(ns), Console(stderr=True, highlight=False)
    try:
        header_safe(ns.api_key or os.environ.get("OPENAI_API_KEY") or "", "the API key")
    except Unusable as exc:
        err.print(literal(f"repro-proxy check: {exc}"))
        return 2
    err.print(plan.describe(), markup=False)
    if not (ns.api_key or os.environ.get("OPENAI_API_KEY")):
        err.print("note: no API key (--api-key or OPENAI_API_KEY); sending none", markup=False)
    elif warning := cleartext_warning(ns.base_url, "the API key"):
        err.print(literal(warning))
    if not _confirmed(ns.yes):
        err.print("aborted", markup=False)
        return 1
    async with _client(ns) as client:
        with progress(err, plan.arms, plan.n) as advance:
            report = await audit(client, plan, advance)
    if ns.json:
        print_json(report.to_json(), indent=False)
    else:
        Console(highlight=False).print(render(report))
    return report.exit_code


def main(ns: argparse.Namespace) -> int:
    return asyncio.run(run(ns))
