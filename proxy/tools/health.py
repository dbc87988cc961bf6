"""`repro-proxy health`: exit 0 when the proxy answers `GET /healthz`, 1 otherwise.

A container's HEALTHCHECK runs beside the server, with the image's environment but without the
arguments `docker run` gave the server. So the address is the one the running `serve` (PID 1 in
a container) was started with: its --host and --port, else its REPRO_HOST and REPRO_PORT, read
under /proc and resolved as `serve` resolved them. Without such a process, this command's own
environment decides.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

from proxy import config, values
from proxy.core.numbers import integer
from proxy.core.terminal import shown
from proxy.tools.remote import shown_url

TIMEOUT = 2.0
PID = values.ranged(integer, "a process id >= 1", lambda v: 1 <= v < 2**31)
_ADDRESS = ("REPRO_HOST", "REPRO_PORT")
_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        type=values.argument(values.proxy_url),
        default=None,
        help="the proxy's address, without /v1; default: the address of the `serve` process "
        "--pid names",
    )
    parser.add_argument(
        "--pid",
        type=values.argument(PID),
        default=1,
        help="process whose --host/--port (or REPRO_HOST/REPRO_PORT) to follow (default 1, the "
        "server in a container)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        url = args.url or address(*served_by(args.pid))
    except config.SettingError as exc:
        print(f"repro-proxy health: {shown(str(exc))}", file=sys.stderr)
        return 1
    try:
        with _OPENER.open(url.rstrip("/") + "/healthz", timeout=TIMEOUT) as answer:
            healthy = answer.status == 200
    except (OSError, ValueError, urllib.error.URLError) as exc:
        print(f"repro-proxy health: {shown_url(url)}: {shown(str(exc))}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


class _Unfollowed(urllib.request.HTTPRedirectHandler):
    """A redirect is the answer: 3xx is not the proxy saying it is healthy."""

    def redirect_request(self, *_: object) -> None:
        return None


# The proxy's own port, asked directly: HTTP_PROXY and its kin, set for the upstream's egress,
# would send the check to a forward proxy (which fails it, or answers for a dead server).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _Unfollowed())


def served_by(pid: int) -> tuple[list[str], Mapping[str, str]]:
    """The `serve` arguments and the environment of process `pid`; this process's environment
    and no arguments when `pid` is not a `repro-proxy serve` we may read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = [part.decode() for part in handle.read().split(b"\0") if part]
        with open(f"/proc/{pid}/environ", "rb") as handle:
            pairs = [part.decode().partition("=") for part in handle.read().split(b"\0") if part]
    except (OSError, UnicodeDecodeError):
        return [], os.environ
    if "serve" not in argv:
        return [], os.environ
    return argv[argv.index("serve") + 1 :], {name: value for name, _, value in pairs}


def address(arguments: Sequence[str], environ: Mapping[str, str]) -> str:
    """The URL `serve` with these arguments and environment listens on, as seen from here."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    config.add_arguments(parser)
    flags, _ = parser.parse_known_args(list(arguments))
    given = {name: getattr(flags, name) for name in ("host", "port")}
    settings = config.load(given, {k: v for k, v in environ.items() if k in _ADDRESS})
    if settings.port == 0:
        raise config.SettingError("--port 0: the port is chosen at start; pass --url")
    host = _ANY.get(settings.host, settings.host)
    return f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"
