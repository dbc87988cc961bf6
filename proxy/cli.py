"""The `repro-proxy` command: `serve` runs the proxy, `sim` a simulated upstream."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from proxy import __version__, config, logs
from proxy.server import workers
from proxy.store import weakened_tls
from proxy.testing import run
from proxy.tools import admin_cli, audit, cassette_cli, health, rotations_cli, sim

log = logging.getLogger("proxy.cli")


class Parser(argparse.ArgumentParser):
    """A parser that takes flags by their whole name only: with abbreviations, `--up` works
    today and means something else, or nothing, the day another flag starting so is added.
    Subcommands are built by the parser class of their parent, so each takes this one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="repro-proxy",
        description="Reproducible, cached answers from OpenAI-compatible LLM APIs.",
    )
    parser.add_argument("--version", action="version", version=f"repro-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the proxy")
    config.add_arguments(serve)
    simulate = commands.add_parser("sim", help="run a simulated OpenAI-compatible upstream")
    sim.add_arguments(simulate)
    check = commands.add_parser("check", help="audit how reproducible an upstream's answers are")
    audit.add_arguments(check)
    admin_cli.add_commands(commands)
    checkup = commands.add_parser(
        "health", help="exit 0 if a running proxy answers /healthz (a container's HEALTHCHECK)"
    )
    health.add_arguments(checkup)
    cassette_cli.add_commands(commands)
    rotations_cli.add_command(commands)
    run.add_command(commands)
    return parser


def serve(flags: dict[str, str | None]) -> int:
    try:
        settings = config.load(flags)
    except config.SettingError as exc:
        print(f"repro-proxy: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    log.info("starting", extra={"settings": settings.public()})
    for option in config.secrets_on_command_line(flags):
        log.warning(
            "a secret on the command line is readable by every local user: set it in the "
            "environment instead",
            extra={"flag": option.flag, "variable": option.env},
        )
    for name, closest in config.unknown_variables(os.environ):
        log.warning(
            "environment variable names no setting: ignored",
            extra={"variable": name, "did_you_mean": closest},
        )
    if config.nothing_to_replay(settings):
        log.warning(
            "replay mode with nothing to replay: every request will be a 504 cache_miss; give "
            "--cassette, a shared --store, or --admin-token to import one",
            extra={"setting": "--cache-mode / REPRO_CACHE_MODE"},
        )
    for setting, path in config.exposed_keys(settings):
        log.warning(
            "a private key file is readable by every local user: chmod o-r it",
            extra={"setting": setting, "path": path},
        )
    for weak in weakened_tls(settings.store):
        log.warning(
            "the store's TLS certificate is not checked: whoever is on the network path to "
            "Redis can read and forge cache entries",
            extra={"setting": "--store / REPRO_STORE", "option": weak},
        )
    if settings.workers > 1:
        return workers.supervise(settings)
    if workers.inherited_directory():
        print(
            f"repro-proxy: {workers.MULTIPROC_ENV} is set: serve makes its own private "
            "directory for prometheus-client's files when it runs --workers, and one process "
            "needs none; unset it",
            file=sys.stderr,
        )
        return 2
    try:
        workers.run(settings)
    except workers.STARTING as exc:
        print(f"repro-proxy: {workers.start_failure(settings, exc)}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve({k: v for k, v in vars(args).items() if k != "command"})
    if args.command == "check":
        return audit.main(args)
    if args.command == "sim":
        settings = sim.settings_from_args(args)
        try:
            sim.run_sim(settings)
        except OSError as exc:
            line = workers.cannot_listen(settings.host, settings.port, exc)
            print(f"repro-proxy: {line}", file=sys.stderr)
            return 2
        return 0
    if args.command == "health":
        return health.run(args)
    if args.command in ("export", "import", "cassette"):
        return cassette_cli.run(args)
    if args.command == "rotations":
        return rotations_cli.run(args)
    if args.command == "run":
        return run.main(args)
    return admin_cli.run(args)
