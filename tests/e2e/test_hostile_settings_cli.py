"""Hostile flags and variables given to the real command: each is refused before the command
does anything, with exit status 2 and one line naming the flag (and its variable), never a
traceback, a hang, or a secret repeated. Each process here exits at once; one that started
serving or waiting instead fails the test at its timeout."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.fixtures_procs import run_command

QUIET_UPSTREAM = "http://127.0.0.1:9/v1"  # the discard port: nothing is sent to it


def refused(argv: list[str], named: str, **env: str) -> str:
    status, stderr = run_command(argv, **env)
    assert status == 2, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert named in last, stderr
    return last


def serve(*argv: str) -> list[str]:
    return ["serve", "--port", "0", "--upstream", QUIET_UPSTREAM, *argv]


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        # started, and the start-up log line was a logging traceback (orjson and 2^64)
        (serve("--ttl", "99999999999999999999"), {}, "--ttl / REPRO_TTL"),
        (serve(), {"REPRO_MAX_BODY": "99999999999999999999"}, "--max-body / REPRO_MAX_BODY"),
        # a yarl traceback at start
        (["serve", "--port", "0", "--upstream", "https://h:99999/v1"], {}, "--upstream"),
        # a KeyError traceback at start (KELVIN SIGN)
        (serve(), {"REPRO_NEAR_CACHE": "64\u212a"}, "--near-cache / REPRO_NEAR_CACHE"),
        # listened on every interface
        (serve("--host", ""), {}, "--host / REPRO_HOST"),
        # started with a ttl of 12 seconds
        (serve(), {"REPRO_TTL": "\u0661\u0662"}, "--ttl / REPRO_TTL"),
    ],
    ids=["ttl", "max-body-env", "upstream-port", "kelvin", "empty-host", "arabic-digits"],
)
def test_serve_refuses_at_start(argv: list[str], env: dict[str, str], named: str) -> None:
    assert refused(argv, named, **env).startswith(f"repro-proxy: {named}")


def test_serve_never_repeats_a_token_it_refuses() -> None:
    last = refused(serve(), "--admin-token", REPRO_ADMIN_TOKEN="hunter2\nadmin")
    assert "hunter2" not in last


def test_serve_never_repeats_the_password_of_an_upstream_it_refuses() -> None:
    last = refused(["serve", "--port", "0"], "--upstream", REPRO_UPSTREAM="https://u:hunter2@h/v1")
    assert "hunter2" not in last


def test_serve_refuses_a_cassette_it_could_not_write_at_exit(tmp_path: Path) -> None:
    refused(serve("--cache-scope", "shared", "--cassette", str(tmp_path)), "--cassette")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["stats", "--url", "http://127.0.0.1:9", "--timeout", "nan"], "--timeout"),
        (["purge", "--all", "--url", "http://127.0.0.1:9", "--timeout", "1e400"], "--timeout"),
        (["stats", "--url", "http://[::1"], "--url / REPRO_URL"),
        (["fingerprints", "--url", "http://127.0.0.1:abc"], "--url / REPRO_URL"),
        (["rotations", "--url", "http://127.0.0.1:9", "--examples", "-1"], "--examples"),
        (["health", "--pid", "0"], "--pid"),
        (["check", "--base-url", "http://127.0.0.1:9/v1", "--timeout", "nan", "-y"], "--timeout"),
    ],
)
def test_the_admin_and_audit_commands_refuse_before_connecting(argv: list[str], named: str) -> None:
    refused(argv, named, REPRO_ADMIN_TOKEN="t", OPENAI_API_KEY="k")


def test_the_admin_url_variable_is_checked_as_the_flag_is() -> None:
    refused(["stats"], "--url / REPRO_URL", REPRO_ADMIN_TOKEN="t", REPRO_URL="http://[::1")


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize(
    "argv",
    [
        ["import", "--url", "http://127.0.0.1:9", "{pipe}"],
        ["cassette", "diff", "{pipe}", "/dev/null"],
    ],
    ids=["import", "diff"],
)
def test_a_named_pipe_for_a_cassette_is_refused_not_waited_on(argv: list[str], fifo: str) -> None:
    argv = [fifo if part == "{pipe}" else part for part in argv]
    last = refused(argv, "not a regular file", REPRO_ADMIN_TOKEN="t")
    assert fifo in last


def test_import_checks_the_scope_its_variable_gives(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    argv = ["import", "--url", "http://127.0.0.1:9", str(path)]
    refused(argv, "--cache-scope / REPRO_CACHE_SCOPE", REPRO_ADMIN_TOKEN="t", REPRO_CACHE_SCOPE="x")


def test_export_names_the_encryption_key_it_refuses_and_never_shows_it() -> None:
    argv = ["export", "--store", "redis://127.0.0.1:9/0"]
    last = refused(argv, "--encryption-key", REPRO_ENCRYPTION_KEY="hunter2hunter2")
    assert "hunter2" not in last


def test_export_refuses_an_output_it_would_replace_or_fail_on(tmp_path: Path, fifo: str) -> None:
    # The new file replaced whatever stood at --output once the export was done: a pipe, or
    # /dev/null for root, became a regular file; a directory failed only after the download.
    for output in (fifo, str(tmp_path), str(tmp_path / "absent" / "out.jsonl")):
        argv = ["export", "--url", "http://127.0.0.1:9", "--output", output]
        assert output in refused(argv, "--output", REPRO_ADMIN_TOKEN="t")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
