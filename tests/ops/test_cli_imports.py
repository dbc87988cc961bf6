"""`serve` loads none of the tools' dependencies: they are imported when their command runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from proxy import cli
cli.build_parser()
import proxy.server.app
dependencies = ("rich", "httpx")
runtime = ("proxy.tools.sim.app", "proxy.tools.audit.network", "proxy.tools.audit.view")
print(sorted(m for m in sys.modules if m.split(".")[0] in dependencies or m in runtime))
"""


def python(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_parser_and_the_server_import_no_tool_dependencies() -> None:
    done = python("-c", PROBE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["check", "stats", "sim", "rotations"])
def test_each_tool_command_still_explains_its_flags(command: str) -> None:
    done = python("-m", "proxy", command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: repro-proxy {command}")
    assert "--help" in done.stdout
