"""What `--help` tells: every option explained, the sim's defaults and control routes, and the
range of each distance `check` reports."""

from __future__ import annotations

import argparse
import re

import pytest

from proxy.cli import build_parser
from proxy.core.textdistance import cosine_distance, normalized_levenshtein
from proxy.tools.audit.view import DISTANCES
from proxy.tools.sim import control


def subcommand(name: str) -> argparse.ArgumentParser:
    commands = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    parser: argparse.ArgumentParser = commands.choices[name]
    return parser


COMMANDS = [
    "serve", "sim", "check", "stats", "fingerprints", "purge", "export", "import", "health",
    "rotations",
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_of_every_command_is_explained(command: str) -> None:
    for action in subcommand(command)._actions:
        assert action.help, (command, action.option_strings or action.dest)


def test_sim_help_shows_its_defaults_and_every_control_route() -> None:
    text = subcommand("sim").format_help()
    assert "(default: 8090)" in text
    assert "(default: fp_sim_0001)" in text
    listed = set(re.findall(r"^\s+(GET|POST|DELETE)\s+(/_sim/\S+)", text, re.MULTILINE))
    served = {(route.method, route.path) for route in control.routes()}
    assert listed == served


def test_each_distance_stays_within_the_range_the_report_names() -> None:
    def most(kind: str) -> float:
        match = re.search(r"0 to (\d+)", DISTANCES[kind])
        assert match is not None
        return float(match.group(1))

    assert normalized_levenshtein("abc", "xyz") == most("text")
    assert cosine_distance([1.0, 0.0], [-1.0, 0.0]) == most("embedding")
    assert "0 to 2" in re.sub(r"\s+", " ", subcommand("check").format_help())


@pytest.mark.parametrize("command", [name for name in COMMANDS if name not in ("serve", "sim")])
def test_every_option_that_has_a_default_names_it(command: str) -> None:
    """An operator reads `--help`, not the reference: `check` without --base-url asks the proxy
    on 8080, which its help must say (serve's and sim's defaults are checked with the settings
    and above)."""
    for action in subcommand(command)._actions:
        if action.default not in (None, False, argparse.SUPPRESS):
            assert "default" in (action.help or ""), (command, action.option_strings)


@pytest.mark.parametrize("command", ["export", "import"])
def test_a_transfer_claims_no_default_url(command: str) -> None:
    """Without --url or --store, export and import ask which: --url has no default there."""
    url = next(a for a in subcommand(command)._actions if "--url" in a.option_strings)
    assert url.help and "default" not in url.help
