"""A hostile upstream against the cassettes the proxy writes. A cassette's checks are stricter
than a HIT's: an answer whose JSON names a key twice is served live as the upstream sent it, but
no cassette may hold it (a reviewer reads the first copy, a client the last). Written anyway,
that one answer made the whole file unloadable: the proxy's next start with `--cassette`, the
pytest plugin's replay and `/admin/import` refused the cassette the proxy itself had written.
Each writer now leaves such an answer out, and says so."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import httpx
import orjson
import pytest

from bench.procs import stop
from tests.e2e.test_pytest_plugin import ASKING, CASSETTE, RECORDING_KEY, run
from tests.fixtures_procs import launch_proxy, wait_up
from tests.hostile import Received, Scripted, completion, http_answer

TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
HOSTILE = "Answered twice."
TWICE = completion("served").replace(b'"content":', b'"content":"reviewed","content":')


TWICE_ANSWER = http_answer(TWICE, "Content-Type: application/json")
LONG_TYPE = http_answer(  # served on a HIT (up to 8 KiB), a cassette line holds 255 characters
    completion("served"), "Content-Type: application/json; profile=" + "x" * 300
)


def answer_by_prompt(hostile: bytes = TWICE_ANSWER) -> Scripted:
    """An upstream answering a prompt saying HOSTILE with `hostile`, any other with a plain
    completion."""

    async def write(writer: asyncio.StreamWriter, request: Received) -> None:
        plain = http_answer(completion("A colour: red."), "Content-Type: application/json")
        writer.write(hostile if HOSTILE.encode() in request.body else plain)
        await writer.drain()

    return Scripted(write)


def ask(url: str, prompt: str) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    headers = {"Authorization": "Bearer sk-a"}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize("hostile", [TWICE_ANSWER, LONG_TYPE], ids=["key-twice", "long-type"])
def test_serve_writes_a_cassette_it_can_start_with_again(tmp_path: Path, hostile: bytes) -> None:
    path = tmp_path / "llm.jsonl"
    flags = ("--cassette", str(path), "--cache-scope", "shared")
    with answer_by_prompt(hostile) as upstream:
        proxy = wait_up(launch_proxy(upstream.v1, *flags, stderr=subprocess.PIPE))
        try:
            assert ask(proxy.url, HOSTILE).status_code == 200  # served live, as sent
            assert ask(proxy.url, HOSTILE).headers["X-Repro-Cache"] == "HIT"
            assert ask(proxy.url, "Name a colour.").status_code == 200
        finally:
            proxy.proc.send_signal(signal.SIGTERM)
            _, err = proxy.proc.communicate(timeout=60)
        again = wait_up(launch_proxy(upstream.v1, *flags, "--cache-mode", "replay"))
        try:
            replayed = ask(again.url, "Name a colour.")
            assert replayed.headers["X-Repro-Cache"] == "HIT"
            assert ask(again.url, HOSTILE).status_code == 504  # left out: a miss, not a refusal
        finally:
            stop(again.proc)
        assert b"answers left out: no cassette may hold them" in err
        lines = path.read_bytes().splitlines()
        assert len(lines) == 1 and b"red" in lines[0]


def test_an_export_imports_into_another_proxy(tmp_path: Path) -> None:
    flags = ("--admin-token", TOKEN, "--cache-scope", "shared")
    with answer_by_prompt() as upstream:
        source = wait_up(launch_proxy(upstream.v1, *flags))
        target = wait_up(launch_proxy(upstream.v1, *flags))
        try:
            ask(source.url, HOSTILE)
            ask(source.url, "Name a colour.")
            exported = httpx.get(f"{source.url}/admin/export", headers=ADMIN, timeout=30)
            assert exported.status_code == 200
            imported = httpx.post(
                f"{target.url}/admin/import", content=exported.content, headers=ADMIN, timeout=30
            )
            assert imported.status_code == 200, imported.text
            assert imported.json() == {"imported": 1}
        finally:
            stop(source.proc)
            stop(target.proc)


RECORDED = f"""
from llm_helpers import ask

def test_plain():
    assert ask("Name a colour.")

def test_hostile():
    assert ask({HOSTILE!r})
"""


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["one-process", "xdist"])
def test_the_plugin_says_what_it_left_out_and_its_replay_loads(
    project: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    project.makepyfile(llm_helpers=ASKING)
    project.makepyfile(test_llm=RECORDED)
    with answer_by_prompt() as upstream, pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", RECORDING_KEY)
        recording = run(
            project, *workers, "--llm-record-mode=once", f"--llm-upstream={upstream.v1}"
        )
    recording.assert_outcomes(passed=2)
    assert recording.ret == pytest.ExitCode.USAGE_ERROR
    recording.stderr.fnmatch_lines(
        ["*left out of the cassette, no cassette may hold it: /v1/chat/completions*'content'*"]
    )
    recording.stdout.fnmatch_lines(["*wrote 1 answer*left out 1 answer no cassette may hold*"])
    lines = (project.path / CASSETTE).read_bytes().splitlines()
    assert [orjson.loads(line)["model"] for line in lines] == ["gpt-4o-mini"]
    replay = run(project)  # loads: the plain test replays, the other misses
    replay.assert_outcomes(passed=1, failed=1)
    replay.stdout.fnmatch_lines(["*LLM request not in the cassette*"])
