"""What `serve` says at start about its environment, read from a real process's log."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile

import orjson
import pytest

from tests.fixtures_procs import ProxyFactory, _clean_env, stop


def test_serve_warns_once_of_a_misspelt_variable_without_showing_its_value(
    start_proxy: ProxyFactory,
) -> None:
    with tempfile.TemporaryFile() as stderr:
        proxy = start_proxy(env={"REPRO_UPSTRAEM": "http://secret-host:1/v1"}, stderr=stderr)
        stop(proxy.proc)
        stderr.seek(0)
        text = stderr.read()
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith(b"{")]
    warnings = [line for line in lines if line.get("variable") == "REPRO_UPSTRAEM"]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert warnings[0]["did_you_mean"] == "REPRO_UPSTREAM"
    assert b"secret-host" not in text


@pytest.mark.parametrize("command", ["serve", "sim"])
def test_a_port_in_use_is_one_line_and_status_2(command: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "proxy", command, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            env=_clean_env(),
        )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"repro-proxy: --host / --port: cannot listen on 127.0.0.1:{port}: " + (
        "address already in use"
    )
