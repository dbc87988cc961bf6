"""A cassette whose line names a key twice is refused by every command that loads one: orjson
keeps the last copy, a reviewer reads the first, so the line could pass review with one request
and replay another."""

from __future__ import annotations

import signal
from pathlib import Path

from openai import OpenAI

from tests.fixtures_procs import ProxyFactory, Sim, free_port, run_cli

PROMPT = "Reviewed prompt."


def test_serve_replay_and_diff_refuse_a_line_naming_a_key_twice(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    with OpenAI(base_url=recorder.v1, api_key="sk-rec", max_retries=0) as client:
        for prompt in ("Other.", PROMPT):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
            )
    recorder.proc.send_signal(signal.SIGTERM)
    assert recorder.proc.wait(timeout=15) == 0
    lines = tape.read_bytes().splitlines(keepends=True)
    number = next(n for n, text in enumerate(lines, start=1) if PROMPT.encode() in text)
    # The reviewer reads the first "messages"; orjson keys and replays the second.
    lines[number - 1] = lines[number - 1].replace(
        b'"messages":', b'"messages":[{"role":"user","content":"Harmless."}],"messages":', 1
    )
    forged = tmp_path / "forged.jsonl"
    forged.write_bytes(b"".join(lines))
    said = f"cassette line {number}: names the key 'messages' more than once"

    offline = f"http://127.0.0.1:{free_port()}/v1"
    replay = run_cli(
        "serve", "--cassette", str(forged), "--cache-scope", "shared", "--cache-mode", "replay",
        "--upstream", offline, "--port", str(free_port()),
    )  # fmt: skip
    diff = run_cli("cassette", "diff", str(tape), str(forged))
    for result in (replay, diff):
        assert result.returncode == 2, result.stderr
        assert said in result.stderr
        assert PROMPT not in result.stderr and "Harmless" not in result.stderr
    assert run_cli("cassette", "diff", str(tape), str(tape)).returncode == 0
