"""The shipped deployments give the proxy's drain the time it takes: an orchestrator that kills
it before `--shutdown-timeout` ends cuts the answers in flight without a word in the log."""

from __future__ import annotations

import re

from proxy import cli, config
from tests.ops.test_deploy import (
    compose,
    containers,
    interpolate,
    proxy_environment,
    resource,
)

CLOSING = 5  # seconds a drained proxy may take to close (its store, the cassette)


def test_the_pods_grace_covers_the_sidecars_pause_and_drain() -> None:
    pod = resource("Deployment", "my-app")["spec"]["template"]["spec"]
    proxy = containers(pod)["repro-proxy"]
    args = cli.build_parser().parse_args(proxy["args"])
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    settings = config.load(flags, proxy_environment(proxy))
    command = proxy["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command  # in the image (coreutils), as a preStop exec needs
    pause = int(command[1])
    assert pause > 0
    # A native sidecar is stopped after the application, whose own drain (of requests that
    # wait on the same upstream) is taken to be as long as the proxy's.
    application = settings.shutdown_timeout
    needed = application + pause + settings.shutdown_timeout + CLOSING
    assert pod["terminationGracePeriodSeconds"] >= needed


def test_compose_gives_the_proxy_its_drain() -> None:
    proxy = compose()["services"]["proxy"]
    args = cli.build_parser().parse_args(proxy["command"])
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    environ = {k: interpolate(v) for k, v in proxy["environment"].items()}
    settings = config.load(flags, environ)
    grace = re.fullmatch(r"(\d+)s", proxy["stop_grace_period"])
    assert grace, proxy["stop_grace_period"]
    assert int(grace[1]) >= settings.shutdown_timeout + CLOSING
