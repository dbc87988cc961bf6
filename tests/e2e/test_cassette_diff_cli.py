"""`repro-proxy cassette diff` run as a reviewer runs it, on the hostile cassettes of
tests/unit/test_cassette_hostile_files.py (which checks the readers in process): each case
starts the command, so it lives with the other tests that start a process."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from proxy.store import cassette
from tests.fixtures_procs import run_cli
from tests.unit.test_cassette_hostile_files import (
    DEEP_LIST,
    deep_requests,
    escaped_pair,
    line,
    wrong,
)


@pytest.mark.parametrize(
    ("field", "value"),
    [("request", 5), ("request", [1]), ("body", 5), ("body_base64", 5), ("recorded_at", [1])],
)
def test_a_field_of_the_wrong_type_is_one_line_of_error_not_a_traceback(
    tmp_path: Path, field: str, value: object
) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_bytes(line("Hello."))
    bad.write_bytes(line("Hello.", prompt="Other.") + wrong(field, value))
    result = run_cli("cassette", "diff", str(good), str(bad))
    assert result.returncode == 2
    assert result.stderr == (
        f"repro-proxy cassette diff: cassette line 2: {field!r} has the wrong type\n"
    )


def test_a_diff_of_long_answers_ends_and_still_tells_what_changed(tmp_path: Path) -> None:
    """Three million characters each: an unbounded edit distance would take minutes per pair."""
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    old.write_bytes(line("ab" * 1_500_000))
    new.write_bytes(line("ba" * 1_500_000) + line("x" * 3_000_000, prompt="Two."))
    old.write_bytes(old.read_bytes() + line("x" * 2_999_999 + "y", prompt="Two."))
    result = run_cli("cassette", "diff", "--json", str(old), str(new))
    assert result.returncode == 1, result.stderr
    report = orjson.loads(result.stdout)
    assert report["summary"] == {"changed": 2, "only_old": 0, "only_new": 0, "identical": 0}
    distances = sorted(row["distance"] for row in report["requests"])
    assert distances == [1 / 3_000_000, 2 / 3_000_000]


def test_a_diff_prints_no_escape_sequence_a_cassette_carries(tmp_path: Path) -> None:
    """Such a sequence could erase the row of a changed answer from a reviewer's terminal."""
    old, new = escaped_pair(tmp_path)
    result = run_cli("cassette", "diff", str(old), str(new))
    assert result.returncode == 1
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert "\x07" not in result.stdout


def test_a_cassette_too_large_in_all_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    big = tmp_path / "llm.jsonl"
    with big.open("wb") as out:  # sparse: larger than MAX_CASSETTE, no disk used
        out.truncate(cassette.MAX_CASSETTE + 1)
    done = run_cli("cassette", "diff", str(big), str(big))
    assert done.returncode == 2 and "in all" in done.stderr and "Traceback" not in done.stderr


def test_a_request_nested_past_the_proxys_bound_is_one_line_naming_its_line(
    tmp_path: Path,
) -> None:
    for path in deep_requests(tmp_path):
        done = run_cli("cassette", "diff", str(path), str(path))
        assert done.returncode == 2 and "line 1" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_diff_compares_answers_nested_too_deeply_to_flatten(tmp_path: Path) -> None:
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    record = orjson.loads(line("fine"))
    old.write_bytes(orjson.dumps(record) + b"\n")
    deep = b'{"choices":[{"message":{"tool_calls":[{"function":{"arguments":' + DEEP_LIST
    deep += b"}}]}}]}"
    new.write_bytes(orjson.dumps(dict(record, body=deep.decode(), stored_at=2.0)) + b"\n")
    done = run_cli("cassette", "diff", str(old), str(new), "--json")
    assert done.returncode == 1, done.stderr  # changed: an exit status a gate can trust
    assert orjson.loads(done.stdout)["summary"]["changed"] == 1
