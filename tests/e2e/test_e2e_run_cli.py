"""`repro-proxy run -- COMMAND`: a test command of any language records a cassette through the
proxy, then replays it offline; what the pytest plugin fails a test for, the command is told on
standard error, and its exit status says it. Real processes: the command, the proxy in it, the
sim, and the official Python SDK in the child."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures_procs import Sim

ASK = """
import sys
from openai import OpenAI
question = sys.argv[1] if len(sys.argv) > 1 else "Name a colour."
answer = OpenAI(max_retries=0).chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
)
print(answer.choices[0].message.content)
"""

SWALLOW = """
from openai import OpenAI, APIStatusError
try:
    OpenAI(max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Never recorded."}]
    )
except APIStatusError:
    pass
"""


def run(
    tmp: Path, *argv: str, key: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`repro-proxy run ARGV` in `tmp`, with this machine's environment but its REPRO_* and
    OpenAI settings."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("REPRO_", "OPENAI_"))}
    if key is not None:
        environ["OPENAI_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "proxy", "run", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp,
        env=environ,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def script(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def test_a_command_records_once_then_replays_offline(tmp_path: Path, sim: Sim) -> None:
    ask = script(tmp_path, "ask.py", ASK)
    record = ["--record-mode", "once", "--upstream", sim.v1, "--", sys.executable, ask]
    recorded = run(tmp_path, *record, key="sk-recorder")
    assert recorded.returncode == 0, recorded.stderr
    tape = tmp_path / "tests" / "cassettes" / "llm.jsonl"
    assert tape.is_file() and len(tape.read_bytes().splitlines()) == 1
    assert f"wrote 1 answer to {tape}" in recorded.stderr
    assert len(sim.llm_requests()) == 1
    sim.reset()
    # No key, no flag: replays (once, the cassette existing, replays too), never the upstream.
    for argv in ([], ["--record-mode", "once", "--upstream", sim.v1]):
        replayed = run(tmp_path, *argv, "--", sys.executable, ask)
        assert replayed.returncode == 0, replayed.stderr
        assert replayed.stdout == recorded.stdout and recorded.stdout.strip()
        assert "replaying tests/cassettes/llm.jsonl" in replayed.stderr
    assert sim.requests() == []


def test_a_request_the_cassette_lacks_is_explained_and_fails_the_command(
    tmp_path: Path, sim: Sim
) -> None:
    ask = script(tmp_path, "ask.py", ASK)
    record = ["--record-mode", "once", "--upstream", sim.v1, "--", sys.executable, ask]
    assert run(tmp_path, *record, key="sk-recorder").returncode == 0
    missed = run(tmp_path, "--", sys.executable, ask, "Name a river.")
    assert missed.returncode == 1  # the child's own failure: the SDK raised
    assert "LLM request not in the cassette" in missed.stderr
    assert '-      "content": "Name a colour.",' in missed.stderr  # the closest, as a diff
    assert '+      "content": "Name a river.",' in missed.stderr
    assert "--record-mode=new_episodes" in missed.stderr and "--llm-" not in missed.stderr
    # A command that catches the SDK's error still exits 1: a replay that missed is no pass.
    swallowed = run(tmp_path, "--", sys.executable, script(tmp_path, "swallow.py", SWALLOW))
    assert swallowed.returncode == 1
    assert "the command exited 0, but requests were not answered" in swallowed.stderr
    assert sim.llm_requests()[1:] == []  # only the recording's


def test_new_episodes_keeps_the_cassette_and_adds_what_was_missing(
    tmp_path: Path, sim: Sim
) -> None:
    ask = script(tmp_path, "ask.py", ASK)
    upstream = ["--upstream", sim.v1]
    first = run(tmp_path, "--record-mode", "once", *upstream, "--", sys.executable, ask, key="k")
    assert first.returncode == 0, first.stderr
    river = ["--", sys.executable, ask, "Name a river."]
    more = run(tmp_path, "--record-mode", "new_episodes", *upstream, *river, key="sk-recorder")
    assert more.returncode == 0, more.stderr
    assert "wrote 2 answers" in more.stderr
    for question in ("Name a colour.", "Name a river."):
        again = run(tmp_path, "--", sys.executable, ask, question)
        assert again.returncode == 0, again.stderr


def test_the_commands_status_is_the_runs_and_a_missing_command_is_said(tmp_path: Path) -> None:
    exits = run(tmp_path, "--", sys.executable, "-c", "import sys; sys.exit(3)")
    assert exits.returncode == 3
    absent = run(tmp_path, "--", str(tmp_path / "no-such-command"))
    assert absent.returncode == 127
    assert "cannot run" in absent.stderr and "no-such-command" in absent.stderr
    nothing = run(tmp_path)
    assert nothing.returncode == 2 and "give the command to run after --" in nothing.stderr
    # The command sees the proxy, and a placeholder key only where it had none.
    seen = "import os; print(os.environ['OPENAI_BASE_URL'], os.environ['OPENAI_API_KEY'])"
    shown = run(tmp_path, "--", sys.executable, "-c", seen)
    url, key = shown.stdout.split()
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    assert key == "sk-repro-replay-placeholder"
    assert run(tmp_path, "--", sys.executable, "-c", seen, key="sk-mine").stdout.split()[1] == (
        "sk-mine"
    )


def test_a_bad_cassette_stops_before_the_command_runs(tmp_path: Path) -> None:
    """The attacker's, or a bad merge's, cassette: refused with the line it fails on, and the
    command never runs against a proxy that would serve part of it."""
    tape = tmp_path / "llm.jsonl"
    tape.write_text('{"route": "/v1/chat/completions", "headers": {"Authorization": "x"}}\n')
    marker = tmp_path / "ran"
    touch = f"open({str(marker)!r}, 'w').close()"
    refused = run(tmp_path, "--cassette", str(tape), "--", sys.executable, "-c", touch)
    assert refused.returncode == 2
    assert "llm.jsonl" in refused.stderr and "line 1" in refused.stderr
    assert not marker.exists()


def test_a_stopped_run_stops_its_command_and_still_writes_what_was_recorded(
    tmp_path: Path, sim: Sim
) -> None:
    """A CI runner stopping the job sends SIGTERM: the command gets it, ends its own way, and
    the answers it recorded before are written."""
    waits = script(
        tmp_path,
        "waits.py",
        ASK
        + """
import signal, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
print("asked", flush=True)
time.sleep(30)
""",
    )
    argv = ["run", "--record-mode", "all", "--upstream", sim.v1, "--", sys.executable, waits]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("REPRO_", "OPENAI_"))}
    environ["OPENAI_API_KEY"] = "sk-recorder"
    runner = subprocess.Popen(
        [sys.executable, "-m", "proxy", *argv],
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert runner.stdout is not None
    deadline = time.monotonic() + 30
    for line in runner.stdout:  # the answer, then "asked"
        if line.strip() == "asked" or time.monotonic() > deadline:
            break
    runner.send_signal(signal.SIGTERM)
    _, errors = runner.communicate(timeout=30)
    assert runner.returncode == 7, errors
    assert "wrote 1 answer" in errors
    assert (tmp_path / "tests" / "cassettes" / "llm.jsonl").is_file()
