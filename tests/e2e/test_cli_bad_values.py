"""Wrong values given to the real command: each is refused with exit status 2 and one line,
never a traceback. Each case starts `python -m proxy`, so these live with the other tests that
start a process (tests/unit/test_bad_input.py checks the same messages in process)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--store", "memory://?max_bytes=lots"],
        ["serve", "--store", "memory://?colour=blue"],
        ["serve", "--store", "redis://127.0.0.1:6379/0?clustr=true"],
        ["serve", "--ttl", "abc"],
        ["serve", "--max-connections", "-3"],
    ],
)
def test_serve_with_a_wrong_value_prints_one_line_and_exits_2(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", *argv], capture_output=True, timeout=60, check=False
    )
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"repro-proxy: {argv[1]} / REPRO_")
    assert argv[2] in lines[0]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["sim", "--port", "70000"], "--port"),
        (["sim", "--latency", "-1"], "--latency"),
        (["sim", "--divergence", "3"], "--divergence"),
        (["sim", "--chunk-delay", "soon"], "--chunk-delay"),
        (["stats", "--url", "localhost:8080", "--admin-token", "t"], "--url"),
    ],
)
def test_the_other_commands_refuse_a_wrong_value_without_a_traceback(
    argv: list[str], named: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", *argv], capture_output=True, timeout=60, check=False
    )
    stderr = done.stderr.decode()
    assert done.returncode == 2
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert named in last and argv[2] in last
    assert "expected" in last or "must be" in last
