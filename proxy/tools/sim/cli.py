"""`repro-proxy sim`: its flags, and serving until stopped.

The parser is built for every command, `serve` included, so the application itself is imported
only when the simulator runs.
"""

from __future__ import annotations

import argparse

from proxy.tools.sim.state import SimSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `repro-proxy sim`; the CLI owns the parser, this module owns the options."""
    defaults = SimSettings()
    parser.add_argument("--host", default=defaults.host, help="listen address")
    parser.add_argument("--port", type=int, default=defaults.port, help="listen port")
    parser.add_argument(
        "--fingerprint",
        default=defaults.fingerprint,
        help='system_fingerprint to answer with; "null" answers with null',
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before answering")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        default=[],
        help="accepted bearer key (repeatable); none given: any non-empty key",
    )
    parser.add_argument(
        "--divergence",
        type=float,
        default=0.0,
        help="fraction (0..1) of seeded answers that differ anyway, as on the real service",
    )
    parser.add_argument(
        "--drift",
        type=float,
        default=defaults.drift,
        help="fraction (0..1) of seeded requests whose answer changes with the fingerprint",
    )
    parser.add_argument(
        "--fingerprints",
        default="",
        help="comma-separated fingerprints to answer with at random (a fleet mid-rollout)",
    )


def settings_from_args(ns: argparse.Namespace) -> SimSettings:
    """Parsed flags to settings; the word "null" stands for a null system_fingerprint."""
    return SimSettings(
        host=ns.host,
        port=ns.port,
        fingerprint=None if ns.fingerprint == "null" else ns.fingerprint,
        latency=ns.latency,
        chunk_delay=ns.chunk_delay,
        api_keys=tuple(ns.api_keys),
        divergence=ns.divergence,
        drift=ns.drift,
        fingerprints=tuple(name for name in ns.fingerprints.split(",") if name),
    )


def run_sim(settings: SimSettings) -> None:
    """Serve until SIGINT/SIGTERM, which run_app turns into a graceful, quick shutdown."""
    from aiohttp import web

    from proxy.tools.sim.app import create_sim_app

    url = f"http://{settings.host}:{settings.port}"
    web.run_app(
        create_sim_app(settings),
        host=settings.host,
        port=settings.port,
        print=lambda _: print(f"repro-proxy sim listening on {url}", flush=True),
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=1.0,
    )
