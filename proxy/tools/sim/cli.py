"""`repro-proxy sim`: its flags, and serving until stopped.

The parser is built for every command, `serve` included, so the application itself is imported
only when the simulator runs.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from proxy.tools.sim.state import SimSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `repro-proxy sim`; the CLI owns the parser, this module owns the options."""
    defaults = SimSettings()
    parser.add_argument("--host", default=defaults.host, help="listen address")
    parser.add_argument(
        "--port", type=int, default=defaults.port, help="listen port; 0: a free one, reported"
    )
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
    )


def run_sim(settings: SimSettings) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully and quickly."""
    asyncio.run(_serve(settings))


async def _serve(settings: SimSettings) -> None:
    """Like aiohttp's run_app, but announcing the port actually bound (--port 0: a free one)
    on stderr, where a fixture reads it."""
    from aiohttp import web

    from proxy.tools.sim.app import create_sim_app

    runner = web.AppRunner(
        create_sim_app(settings),
        access_log=None,
        handler_cancellation=True,
        handle_signals=False,
        shutdown_timeout=1.0,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        print(f"repro-proxy sim: listening on {site.name}", file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
