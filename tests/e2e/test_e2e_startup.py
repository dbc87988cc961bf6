"""What `serve` says at start about its environment, read from a real process's log."""

from __future__ import annotations

import tempfile

import orjson

from tests.fixtures_procs import ProxyFactory, stop


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
