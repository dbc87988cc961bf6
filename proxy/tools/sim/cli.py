"""`repro-proxy sim`: its flags, and serving until stopped.

The parser is built for every command, `serve` included, so the application itself is imported
only when the simulator runs.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable

from proxy import values
from proxy.core.numbers import decimal
from proxy.tools.sim.state import SimSettings, check_tunable

CONTROL_ROUTES = """\
control routes (unauthenticated; JSON bodies):
  GET    /_sim/fingerprint   the system_fingerprint answered with
  POST   /_sim/fingerprint   {"fingerprint": "fp_…" | null}: rotate it (ends an alternation);
                             {"fingerprints": ["fp_a", "fp_b"]}: one at random per answer
  GET    /_sim/settings      latency, chunk_delay, divergence, drift
  POST   /_sim/settings      change any of them at run time
  POST   /_sim/keys          {"api_keys": […]}: the keys accepted from now on ([] = any)
  POST   /_sim/access_programs  {"access_programs": {"cyber": "daybreak_blue"} | null}: what a
                             Responses request naming none is answered under
  POST   /_sim/faults        {"kind": "status"|"cut"|"error_event"|"hang"|"drop"|…, "count": N, …}:
                             fail the next N LLM requests (status, headers, body, after)
  DELETE /_sim/faults        drop the queued faults
  GET    /_sim/requests      the requests received, as received
  DELETE /_sim/requests      forget them
  GET    /_sim/stats         requests per path, streams completed and cancelled
"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag, and the route list as written."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `repro-proxy sim`; the CLI owns the parser, this module owns the options."""
    parser.formatter_class = HelpFormatter
    parser.epilog = CONTROL_ROUTES
    defaults = SimSettings()
    parser.add_argument(
        "--host", type=values.argument(values.host), default=defaults.host, help="listen address"
    )
    parser.add_argument(
        "--port",
        type=values.argument(values.port),
        default=defaults.port,
        help="listen port; 0: a free one, reported",
    )
    parser.add_argument(
        "--fingerprint",
        default=defaults.fingerprint,
        help='system_fingerprint to answer with; "null" answers with null',
    )
    parser.add_argument(
        "--latency", type=_tunable("latency"), default=0.0, help="seconds before answering"
    )
    parser.add_argument(
        "--chunk-delay", type=_tunable("chunk_delay"), default=0.0, help="seconds between chunks"
    )
    parser.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        default=[],
        help="accepted bearer key (repeatable); none given: any non-empty key",
    )
    parser.add_argument(
        "--divergence",
        type=_tunable("divergence"),
        default=0.0,
        help="fraction (0..1) of seeded answers that differ anyway, as on the real service",
    )
    parser.add_argument(
        "--drift",
        type=_tunable("drift"),
        default=defaults.drift,
        help="fraction (0..1) of seeded requests whose answer changes with the fingerprint",
    )
    parser.add_argument(
        "--fingerprints",
        action="append",
        default=[],
        help="fingerprints to answer with at random (a fleet mid-rollout); repeat the flag or "
        "separate with commas",
    )


def _tunable(name: str) -> Callable[[str], float]:
    """An argparse type that checks a value as /_sim/settings does."""

    def parse(text: str) -> float:
        try:
            return check_tunable(name, decimal(text.strip()))
        except ValueError as exc:
            message = str(exc) if "must" in str(exc) else f"{name} must be a number, got {text!r}"
            raise argparse.ArgumentTypeError(message) from None

    return parse


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
        fingerprints=tuple(name for given in ns.fingerprints for name in given.split(",") if name),
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
