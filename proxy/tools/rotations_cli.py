"""`repro-proxy rotations`: what changed at each fingerprint rotation of a running proxy.

Reads `GET /admin/rotations` (the admin token, like `stats`): per model each rotation (from, to,
when), and for the requests stored under both fingerprints how many, how many identical, and how
far apart. `--distance embedding` measures the pairs again as the cosine distance of their
embeddings (`check`'s), fetched through the proxy's own /v1/embeddings. A table on a terminal,
JSON with `--json` or when piped (fields in docs/reference.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from proxy import values
from proxy.core.numbers import integer
from proxy.tools import remote
from proxy.tools.admin_cli import Refused, add_connection_arguments, connect, shape_checked
from proxy.tools.output import fail, print_json, wants_json

EXAMPLES = values.ranged(integer, "an integer from 0 to 10", lambda v: 0 <= v <= 10)
HELP = "each fingerprint rotation of a running proxy, and how the same requests' answers changed"


def add_command(commands: Any) -> None:
    parser = commands.add_parser("rotations", help=HELP, description=HELP)
    add_connection_arguments(parser, timeout=300)
    add = parser.add_argument
    add("--json", action="store_true", help="print JSON (the default when stdout is not a TTY)")
    add("--model", help="only this model's lineages (its fleets' too), or the lineage named")
    add(
        "--examples",
        type=values.argument(EXAMPLES),
        default=3,
        help="changed answers shown per rotation (0-10, default 3)",
    )
    add("--distance", choices=("text", "embedding"), default="text", help="default: text")
    add(
        "--embedding-model",
        default="text-embedding-3-small",
        help="for --distance embedding (default text-embedding-3-small)",
    )
    add("--api-key", help="API key for the embeddings (default: $OPENAI_API_KEY)")


def run(args: argparse.Namespace) -> int:
    try:
        base, headers = connect(args)
    except Refused as exc:
        fail("rotations", exc)
        return 2
    params: dict[str, Any] = {"examples": args.examples}
    if args.model:
        params["model"] = args.model
    if args.distance == "embedding":
        params["pairs"] = 256
    url = base + "/admin/rotations"
    try:
        status, body = remote.fetch(
            "GET", url, params=params, headers=headers, timeout=args.timeout
        )
        if status != 200:
            raise remote.Unusable(remote.reason(status, body))
        report = remote.parsed(body)
        if args.distance == "embedding":
            shape_checked(lambda found: _measure(base, args, found), report)
        if not isinstance(report, dict):
            raise remote.Unusable("the answer is not what a repro-proxy sends (not an object)")
        report["distance_kind"] = args.distance
        if wants_json(args.json):
            print_json(report)
        else:
            from proxy.tools.rotations_view import render

            shape_checked(render, report)
    except remote.Unusable as exc:
        fail("rotations", f"{remote.shown_url(url)}: {exc}")
        return 1
    return 0


def _measure(base: str, args: argparse.Namespace, report: Any) -> None:
    from proxy.tools.audit.network import AuditError

    try:
        asyncio.run(_embedding_distances(base, args, report))
    except AuditError as exc:
        raise remote.Unusable(str(exc)) from None


async def _embedding_distances(base: str, args: argparse.Namespace, report: Any) -> None:
    """Replace each rotation's distances by the embeddings' cosine distances of its pairs (the
    first 256; `requests` and `identical` still count them all)."""
    import httpx

    from proxy.core.comparison import summary
    from proxy.core.textdistance import cosine_distance
    from proxy.tools.audit.network import embed

    key = args.api_key or os.environ.get("OPENAI_API_KEY", "")
    headers = {"Authorization": f"Bearer {remote.header_safe(key, 'the API key')}"} if key else {}
    trust_env = remote.trusts_environment(base)
    async with httpx.AsyncClient(
        base_url=base + "/v1/",
        headers=headers,
        timeout=args.timeout,
        trust_env=trust_env,
        verify=remote.trust(),
    ) as client:
        for model in report["models"].values():
            for rotation in model["rotations"]:
                pairs = rotation.pop("pairs")
                texts = [p["old"] for p in pairs] + [p["new"] for p in pairs]
                vectors = (
                    await embed(client, args.embedding_model, texts, args.timeout) if texts else []
                )
                half = len(pairs)
                distances = [
                    cosine_distance(vectors[i], vectors[half + i]) if p["distance"] else 0.0
                    for i, p in enumerate(pairs)
                ]
                measured = summary(distances)
                rotation["distance"] = {k: v for k, v in measured.items() if k in _DISTANCE}
                rotation["distance"]["measured"] = len(distances)


_DISTANCE = ("mean", "p50", "p90", "max", "histogram")
