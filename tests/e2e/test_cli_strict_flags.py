"""How the real command reads its flags: only whole names (an abbreviation that works today
would change meaning the day a flag sharing its prefix lands), numbers the simulator can wait
for, a --secret worth its name, and a list flag given twice keeping both values."""

from __future__ import annotations

import argparse
import base64
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.cli import build_parser
from tests.fixtures_procs import run_command, started, stop


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command and nested subcommand, with the words that name it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from commands(sub, (*path, name))


def abbreviation(parser: argparse.ArgumentParser) -> str | None:
    """A prefix of one of the command's long flags that no other flag shares."""
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    for flag in flags:
        if flag != "--help" and sum(f.startswith(flag[:-1]) for f in flags) == 1:
            return flag[:-1]
    return None


def placeholders(parser: argparse.ArgumentParser) -> list[str]:
    positional = [a for a in parser._actions if not a.option_strings]
    return ["x" for a in positional if not isinstance(a, argparse._SubParsersAction)]


LEAVES = [
    (path, parser)
    for path, parser in commands(build_parser())
    if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
]


def test_the_walk_reaches_every_command() -> None:
    names = {" ".join(path) for path, _ in LEAVES}
    assert {"serve", "sim", "check", "stats", "export", "import", "cassette diff"} <= names
    assert all(abbreviation(parser) for _, parser in LEAVES)


@pytest.mark.parametrize(("path", "parser"), LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_no_command_takes_an_abbreviated_flag(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    short = abbreviation(parser)
    assert short is not None
    argv, refused = [*path, *placeholders(parser), short, "x"], f"{short} x"
    if any(action.nargs == argparse.REMAINDER for action in parser._actions):
        # `run -- COMMAND ...`: what follows the command is the command's; before it, refused
        argv, refused = [*path, short, "x"], short
    status, stderr = run_command(argv, REPRO_ADMIN_TOKEN="t")
    assert status == 2, stderr
    assert "Traceback" not in stderr
    assert f"unrecognized arguments: {refused}" in stderr.strip().splitlines()[-1]


def test_serve_names_the_abbreviation_it_refuses_rather_than_serving() -> None:
    status, stderr = run_command(["serve", "--port", "0", "--up", "http://127.0.0.1:9/v1"])
    assert status == 2, stderr
    assert "unrecognized arguments: --up" in stderr


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--latency", "1e300"),  # started, then slept for ever on the first request
        ("--latency", "315360001"),  # beyond ten years, the bound of serve's seconds
        ("--chunk-delay", "1e300"),
        ("--latency", "nan"),
        ("--chunk-delay", "inf"),
        ("--latency", "-1"),
        ("--latency", "1_000"),
        ("--chunk-delay", "\u0661"),
        ("--divergence", "1e300"),
        ("--drift", "-0.5"),
    ],
)
def test_sim_refuses_a_number_it_cannot_wait_for(flag: str, value: str) -> None:
    status, stderr = run_command(["sim", "--port", "0", flag, value])
    assert status == 2, stderr
    assert "Traceback" not in stderr
    assert f"argument {flag}: " in stderr.strip().splitlines()[-1]


SERVE = ["serve", "--port", "0", "--upstream", "http://127.0.0.1:9/v1"]


@pytest.mark.parametrize(
    ("flag", "env"),
    [
        ("", None),
        (None, " \t "),
        (None, "\n"),
        ("shortsecret12345"[:15], None),  # one byte short of the 16 asked for
        ("sixteen-bytes-ok\x7f", None),
        ("sixteen-bytes-ok\x1b[2J", None),
        (None, "two-lines-of-a\nsecret-file"),
        (None, "sixteen-bytes-ok\n\n"),
        (None, "sixteen-bytes-ok\udcff"),  # a byte the locale does not decode
    ],
    ids=["empty", "blank", "newline", "15-bytes", "delete", "escape", "two-lines", "two-newlines",
         "undecodable"],
)  # fmt: skip
def test_serve_refuses_a_secret_without_repeating_it(flag: str | None, env: str | None) -> None:
    argv = SERVE + (["--secret", flag] if flag is not None else [])
    status, stderr = run_command(argv, **({"REPRO_SECRET": env} if env is not None else {}))
    assert status == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("repro-proxy: --secret / REPRO_SECRET: ")
    for given in (flag, env):
        if given and given.strip():
            assert given.strip()[:8] not in stderr


def test_import_refuses_a_short_secret_before_connecting(tmp_path: Path) -> None:
    cassette = tmp_path / "empty.jsonl"
    cassette.write_bytes(b"")
    argv = ["import", "--store", "redis://127.0.0.1:9/0", "--cache-scope", "key"]
    status, stderr = run_command([*argv, "--api-key", "k", str(cassette)], REPRO_SECRET="hunter2")
    assert status == 2, stderr
    assert "--secret / REPRO_SECRET" in stderr.strip().splitlines()[-1]
    assert "hunter2" not in stderr


KEY_A = base64.b64encode(b"a" * 32).decode()
KEY_B = base64.b64encode(b"b" * 32).decode()


def startup(argv: list[str], log: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a process that started listening, stopped once it did."""
    proc, _ = started([sys.executable, "-m", "proxy", *argv], log)
    stop(proc)
    return [orjson.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_each_list_flag_given_twice_keeps_both_values(tmp_path: Path) -> None:
    argv = [*SERVE, "--allowed-host", "a.example", "--allowed-host", "b.example"]
    argv += ["--credential-header", "x-key-a", "--credential-header", "x-key-b"]
    argv += ["--unkeyed-header", "x-trace-a", "--unkeyed-header", "x-trace-b"]
    argv += ["--encryption-key", KEY_A, "--encryption-key", KEY_B]
    lines = startup(argv, tmp_path / "serve.log")
    settings = next(line["settings"] for line in lines if line["msg"] == "starting")
    assert settings["allowed_host"] == ["a.example", "b.example"]
    assert settings["credential_header"] == ["x-key-a", "x-key-b"]
    assert settings["unkeyed_header"] == ["x-trace-a", "x-trace-b"]
    warned = [line.get("flag") for line in lines if line["level"] == "warning"]
    assert "--encryption-key" in warned  # a repeated secret on the command line is one still
    assert KEY_A not in (tmp_path / "serve.log").read_text()


@pytest.mark.parametrize(
    "argv",
    [
        SERVE,
        ["export", "--store", "redis://127.0.0.1:9/0"],
        ["import", "--store", "redis://127.0.0.1:9/0", "/dev/null"],
    ],
    ids=["serve", "export", "import"],
)
def test_an_encryption_key_given_before_another_is_read_too(argv: list[str]) -> None:
    # The first key was dropped: a store written under it read as misses, or not at all.
    status, stderr = run_command(
        [*argv, "--encryption-key", "not-a-key", "--encryption-key", KEY_A]
    )
    assert status == 2, stderr
    assert "--encryption-key / REPRO_ENCRYPTION_KEY" in stderr.strip().splitlines()[-1]
    assert KEY_A not in stderr


def test_an_encryption_key_flag_wins_over_the_variable(tmp_path: Path) -> None:
    argv = ["export", "--store", "redis://127.0.0.1:9/0", "--encryption-key", KEY_A]
    status, stderr = run_command(argv, REPRO_ENCRYPTION_KEY="not-a-key")
    assert status == 1, stderr  # the key passed; the store at the discard port did not answer
    assert "--encryption-key" not in stderr


def test_sim_answers_with_every_fingerprint_it_was_given(tmp_path: Path) -> None:
    argv = ["sim", "--port", "0", "--fingerprints", "fp_a,fp_b", "--fingerprints", "fp_c"]
    proc, url = started([sys.executable, "-m", "proxy", *argv], tmp_path / "sim.log")
    try:
        with urllib.request.urlopen(f"{url}/_sim/fingerprint", timeout=10) as answer:
            shown = orjson.loads(answer.read())
    finally:
        stop(proc)
    assert shown["fingerprints"] == ["fp_a", "fp_b", "fp_c"]


@pytest.mark.parametrize(
    "argv",
    [
        ["purge", "--url", "http://127.0.0.1:9", "--model", "gpt-4o", "--model", "gpt-4o-mini"],
        ["purge", "--url", "http://127.0.0.1:9", "--namespace", "a", "--namespace", "b"],
        ["purge", "--url", "http://127.0.0.1:9", "--fingerprint", "fp_a", "--fingerprint", "fp_b"],
        ["export", "--store", "redis://127.0.0.1:9/0", "--model", "a", "--model", "b"],
        ["export", "--url", "http://127.0.0.1:9", "--namespace", "a", "--namespace", "b"],
    ],
    ids=["purge-model", "purge-namespace", "purge-fingerprint", "export-model", "export-url"],
)
def test_a_filter_given_twice_is_refused_rather_than_narrowed_to_its_last_value(
    argv: list[str],
) -> None:
    """A purge of `--model a --model b` that deleted only b's answers, or an export of b alone,
    would do less than the command line reads as, and say nothing."""
    flag = next(word for word in argv[3:] if word.startswith("--") and argv.count(word) == 2)
    status, stderr = run_command(argv, REPRO_ADMIN_TOKEN="t")
    assert status == 2, stderr
    last = stderr.strip().splitlines()[-1]
    assert flag in last and "once" in last, last


def test_a_store_that_does_not_answer_is_one_line_and_status_1(tmp_path: Path) -> None:
    """Status 1 is for the store or the network; a traceback is for nobody."""
    status, stderr = run_command(["export", "--store", "redis://127.0.0.1:9/0"])
    assert status == 1, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
