"""The pytest plugin, driven as users drive it: pytest runs (pytester) against a real sim."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench.procs import free_port, stop
from proxy.testing.plugin import RECORD_MODES
from proxy.testing.session import RecordMode
from tests.fixtures_procs import Sim, _clean_env, started
from tests.llm_project import ROOT, plugin_args

CASSETTE = Path("tests/cassettes/llm.jsonl")
RECORDING_KEY = "sk-recording-key-0123456789"

ASKING = """
import asyncio

from openai import AsyncOpenAI, OpenAI

def ask(content):
    with OpenAI() as client:
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": content}]
        )
    return answer.choices[0].message.content

def ask_streamed(content):
    with OpenAI() as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": content}], stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

def ask_async(content):
    async def asking():
        async with AsyncOpenAI() as client:
            answer = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": content}]
            )
        return answer.choices[0].message.content
    return asyncio.run(asking())
"""


def tests_asking(project: pytest.Pytester, **prompts: str) -> None:
    """One test per prompt, each asserting the answer it gets."""
    project.makepyfile(llm_helpers=ASKING)
    body = "from llm_helpers import ask\n"
    for name, prompt in prompts.items():
        body += f"\ndef test_{name}():\n    assert ask({prompt!r})\n"
    project.makepyfile(test_llm=body)


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    """In a pytest process of its own: an in-process run would unload, at its end, the modules
    it imported first (openai's, pydantic's), half-breaking them for the tests after it."""
    return project.runpytest_subprocess(*plugin_args(), *args)


def cassette_lines(project: pytest.Pytester) -> list[dict[str, object]]:
    text = (project.path / CASSETTE).read_bytes()
    return [orjson.loads(line) for line in text.splitlines()]


ANSWERS_SEEN = """
import json, pathlib
from llm_helpers import ask, ask_async, ask_streamed

def test_every_kind_of_call():
    seen = [ask_streamed("Stream a colour."), ask_async("Await a river.")]
    out = pathlib.Path("seen.json")
    runs = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps([*runs, seen]))
"""


def test_record_once_then_replay_with_the_upstream_gone(
    project: pytest.Pytester, tmp_path: Path
) -> None:
    sim_argv = [sys.executable, "-m", "proxy", "sim", "--port", "0"]
    own_sim, url = started(sim_argv, tmp_path / "sim.log")
    tests_asking(project, colour="Name a colour.", river="Name a river.")
    project.makepyfile(test_kinds=ANSWERS_SEEN)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("OPENAI_API_KEY", RECORDING_KEY)
            recorded = run(project, "--llm-record-mode=once", f"--llm-upstream={url}/v1")
    finally:
        stop(own_sim)
    recorded.assert_outcomes(passed=3)
    recorded.stdout.fnmatch_lines(["repro-proxy: wrote 4 answers to *llm.jsonl*"])
    lines = cassette_lines(project)
    assert [line["request"]["messages"][0]["content"] for line in lines] == [  # type: ignore[index]
        "Await a river.",
        "Name a colour.",
        "Name a river.",
        "Stream a colour.",
    ]
    for line in lines:
        assert {"model", "fingerprint", "recorded_at"} <= line.keys()
        assert line["model"] == "gpt-4o-mini" and line["fingerprint"] == "fp_sim_0001"
    text = (project.path / CASSETTE).read_text()
    assert RECORDING_KEY not in text and "uthorization" not in text
    replayed = run(project)  # no option: the cassette exists, so the plugin replays it
    replayed.assert_outcomes(passed=3)
    replayed.stdout.fnmatch_lines(["repro-proxy: replayed from *llm.jsonl (4 answers)"])
    again = run(project, "--llm-record-mode=once")  # the cassette exists: replay, no upstream
    again.assert_outcomes(passed=3)
    seen = orjson.loads((project.path / "seen.json").read_bytes())
    assert len(seen) == 3 and seen[0] == seen[1] == seen[2] and all(seen[0])


def record(project: pytest.Pytester, sim: Sim, mode: str = "once", *args: str) -> pytest.RunResult:
    """A recording run, with an API key as a developer's shell has one."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", RECORDING_KEY)
        return run(project, f"--llm-record-mode={mode}", f"--llm-upstream={sim.v1}", *args)


def test_a_changed_prompt_fails_its_test_with_a_diff_and_no_network_call(
    project: pytest.Pytester, sim: Sim
) -> None:
    tests_asking(project, colour="Name a colour.", river="Name a river.")
    record(project, sim).assert_outcomes(passed=2)
    sim.reset()
    tests_asking(project, colour="Name a color.", river="Name a river.")
    result = run(project, f"--llm-upstream={sim.v1}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*LLM request not in the cassette*llm.jsonl (--llm-record-mode=none)",
            "POST /v1/chat/completions (model 'gpt-4o-mini'): the closest recorded request is *",
            "--- recorded",
            "+++ requested",
            '-      "content": "Name a colour.",',
            '+      "content": "Name a color.",',
            "*--llm-record-mode=new_episodes*",
            "FAILED test_llm.py::test_colour*",
        ]
    )
    assert sim.requests() == []


def test_a_request_refusing_stored_answers_is_told_so_not_sent_to_record(
    project: pytest.Pytester, sim: Sim
) -> None:
    """Recorded or not, a request with only-if-cached and no-cache gets no stored answer: the
    failure says so, instead of a diff against itself and advice to record it again."""
    tests_asking(project, colour="Name a colour.")
    record(project, sim).assert_outcomes(passed=1)
    project.makepyfile(
        test_llm="""
from openai import OpenAI

def test_colour():
    with OpenAI() as client:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Name a colour."}],
            extra_headers={"Cache-Control": "only-if-cached, no-cache"},
        )
"""
    )
    result = run(project, f"--llm-upstream={sim.v1}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*LLM request /v1/chat/completions (model 'gpt-4o-mini') cannot be answered from the "
            "cassette: its Cache-Control (only-if-cached with no-cache or no-store) refuses every "
            "stored answer; nor may it reach the upstream (--llm-record-mode=none).*"
        ]
    )
    result.stdout.no_fnmatch_line("*not in the cassette*")
    result.stdout.no_fnmatch_line("*--llm-record-mode=new_episodes*")


def test_a_test_that_swallows_the_error_still_fails(project: pytest.Pytester, sim: Sim) -> None:
    tests_asking(project, colour="Name a colour.")
    record(project, sim).assert_outcomes(passed=1)
    project.makepyfile(
        test_quiet="""
        from llm_helpers import ask

        def test_falls_back_quietly():
            try:
                ask("Something new.")
            except Exception:
                pass
        """
    )
    result = run(project)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_quiet.py::test_falls_back_quietly*"])


def test_new_episodes_records_only_what_is_missing(project: pytest.Pytester, sim: Sim) -> None:
    tests_asking(project, colour="Name a colour.")
    record(project, sim).assert_outcomes(passed=1)
    before = (project.path / CASSETTE).read_bytes()
    sim.reset()
    tests_asking(project, colour="Name a colour.", river="Name a river.")
    record(project, sim, "new_episodes").assert_outcomes(passed=2)
    asked = [orjson.loads(r["body"])["messages"][0]["content"] for r in sim.llm_requests()]
    assert asked == ["Name a river."]
    after = (project.path / CASSETTE).read_bytes()
    assert before in after  # the recorded line is kept byte for byte
    assert len(after.splitlines()) == 2


def test_all_records_everything_anew(project: pytest.Pytester, sim: Sim) -> None:
    tests_asking(project, colour="Name a colour.", river="Name a river.")
    record(project, sim).assert_outcomes(passed=2)
    first = {line["request"]["messages"][0]["content"]: line for line in cassette_lines(project)}  # type: ignore[index]
    sim.reset()
    tests_asking(project, colour="Name a colour.")  # the river test is gone
    record(project, sim, "all").assert_outcomes(passed=1)
    assert len(sim.llm_requests()) == 1
    lines = cassette_lines(project)
    assert len(lines) == 1  # what the suite no longer asks is dropped
    assert lines[0]["stored_at"] > first["Name a colour."]["stored_at"]  # type: ignore[operator]


def test_all_over_part_of_the_suite_keeps_the_other_tests_answers(
    project: pytest.Pytester, sim: Sim
) -> None:
    """`--llm-record-mode=all -k colour` wrote a cassette of the one answer it asked for, and
    every other test missed on the next replay (so did a run stopped by `-x` or Ctrl-C)."""
    tests_asking(project, colour="Name a colour.", river="Name a river.")
    record(project, sim).assert_outcomes(passed=2)
    first = {line["request"]["messages"][0]["content"]: line for line in cassette_lines(project)}  # type: ignore[index]
    sim.reset()
    record(project, sim, "all", "-k", "colour").assert_outcomes(passed=1, deselected=1)
    assert len(sim.llm_requests()) == 1
    lines = {line["request"]["messages"][0]["content"]: line for line in cassette_lines(project)}  # type: ignore[index]
    assert lines["Name a river."] == first["Name a river."]  # kept as it was
    assert lines["Name a colour."]["stored_at"] > first["Name a colour."]["stored_at"]  # type: ignore[operator]


def test_xdist_workers_write_one_cassette(project: pytest.Pytester, sim: Sim) -> None:
    prompts = {f"t{n}": f"Prompt number {n}." for n in range(6)}
    tests_asking(project, **prompts)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", RECORDING_KEY)
        recorded = project.runpytest_subprocess(
            *plugin_args(), "-n", "2", "--llm-record-mode=once", f"--llm-upstream={sim.v1}"
        )
    recorded.assert_outcomes(passed=6)
    asked = sorted(line["request"]["messages"][0]["content"] for line in cassette_lines(project))  # type: ignore[index]
    assert asked == sorted(prompts.values())
    dead = f"http://127.0.0.1:{free_port()}/v1"
    replayed = project.runpytest_subprocess(*plugin_args(), "-n", "2", f"--llm-upstream={dead}")
    replayed.assert_outcomes(passed=6)


def test_the_base_url_fixture_and_a_placeholder_key(project: pytest.Pytester, sim: Sim) -> None:
    tests_asking(project, colour="Name a colour.")
    record(project, sim).assert_outcomes(passed=1)
    project.makepyfile(
        test_env="""
        import os

        def test_environment(llm_base_url):
            assert os.environ["OPENAI_BASE_URL"] == llm_base_url
            assert llm_base_url.startswith("http://127.0.0.1:") and llm_base_url.endswith("/v1")
            assert os.environ["OPENAI_API_KEY"] == "sk-repro-replay-placeholder"
        """
    )
    run(project).assert_outcomes(passed=2)


def test_a_session_that_does_not_use_it_starts_nothing(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_plain="""
        import os
        import sys
        import threading

        def test_untouched():
            assert "OPENAI_BASE_URL" not in os.environ
            assert not [t for t in threading.enumerate() if t.name == "repro-proxy"]
            assert "proxy.server.app" not in sys.modules  # not even imported
        """
    )
    result = project.runpytest_subprocess(*plugin_args())
    result.assert_outcomes(passed=1)
    assert "repro-proxy:" not in result.stdout.str()  # no summary line of the plugin


def test_the_ini_option_moves_the_cassette(project: pytest.Pytester, sim: Sim) -> None:
    project.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        "llm_cassette = recordings/answers.jsonl\n"
    )
    tests_asking(project, colour="Name a colour.")
    record(project, sim).assert_outcomes(passed=1)
    assert (project.path / "recordings/answers.jsonl").is_file()
    assert not (project.path / CASSETTE).exists()
    sim.reset()
    run(project, f"--llm-upstream=http://127.0.0.1:{free_port()}/v1").assert_outcomes(passed=1)
    assert sim.requests() == []


def test_a_missing_cassette_in_none_mode_says_how_to_record(project: pytest.Pytester) -> None:
    tests_asking(project, colour="Name a colour.")
    result = run(project, "--llm-cassette=elsewhere/llm.jsonl")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*nothing is recorded*", "*record one with --llm-record-mode=once*"]
    )
    result.stdout.fnmatch_lines(["repro-proxy: no cassette at *elsewhere/llm.jsonl: nothing*"])
    result.stdout.no_fnmatch_line("*replayed from*")  # from a file that is not there
    assert not (project.path / "elsewhere").exists()


@pytest.mark.parametrize(
    ("line", "said"),
    [
        (b"{not json\n", "cassette line 2: *"),
        (
            b'{"format": 1, "headers": {"Authorization": "Bearer sk-live"}}\n',
            "*never holds headers*",
        ),
        (b"[1, 2]\n", "cassette line 2: not a JSON object"),
        (b'"' + b"x" * (64 * 1024 * 1024 + 8) + b'"\n', "*line 2: longer than * bytes"),
    ],
    ids=["malformed", "credentials", "not-an-object", "huge"],
)
def test_a_hostile_cassette_line_is_one_clear_error(
    project: pytest.Pytester, sim: Sim, line: bytes, said: str
) -> None:
    tests_asking(project, colour="Name a colour.")
    record(project, sim).assert_outcomes(passed=1)
    path = project.path / CASSETTE
    path.write_bytes(path.read_bytes() + line)
    result = project.runpytest_subprocess(*plugin_args())
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: repro-proxy: *llm.jsonl: {said}"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert "sk-live" not in result.stderr.str()


def test_an_unusable_upstream_is_one_clear_error(project: pytest.Pytester) -> None:
    tests_asking(project, colour="Name a colour.")
    result = run(project, "--llm-record-mode=once", "--llm-upstream=ftp://example.com/v1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: repro-proxy: --llm-upstream: *'ftp://example.com/v1'*"])


def test_the_plugin_offers_the_record_modes_the_session_knows() -> None:
    assert tuple(RecordMode) == RECORD_MODES


def test_the_entry_point_names_the_plugin() -> None:
    """Fails until the package is (re)installed with this pyproject."""
    found = importlib.metadata.entry_points(group="pytest11", name="repro_proxy")
    assert [point.value for point in found] == ["proxy.testing.plugin"]


def test_p_no_disables_the_installed_plugin(project: pytest.Pytester, tmp_path: Path) -> None:
    """As installed (a distribution's pytest11 entry point), and turned off with -p no:."""
    site = tmp_path / "site"
    info = site / "repro_plugin_probe-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: repro-plugin-probe\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[pytest11]\nrepro_proxy = proxy.testing.plugin\n")
    env = {**_clean_env(), "PYTHONPATH": f"{site}:{ROOT}"}
    env.pop("OPENAI_BASE_URL", None)

    def pytest_run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
        return subprocess.run(
            argv,
            cwd=project.path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    project.makepyfile(test_one="def test_one():\n    pass\n")
    enabled = pytest_run("--llm-record-mode=none", "--llm-cassette=missing.jsonl")
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    disabled = pytest_run("-p", "no:repro_proxy", "--llm-record-mode=none")
    assert disabled.returncode == pytest.ExitCode.USAGE_ERROR
    assert "unrecognized arguments: --llm-record-mode=none" in disabled.stderr


def test_a_cassette_that_cannot_be_written_is_one_clear_error(
    project: pytest.Pytester, sim: Sim
) -> None:
    tests_asking(project, colour="Name a colour.")
    (project.path / CASSETTE).mkdir(parents=True)  # a directory where the cassette goes
    result = record(project, sim)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # the recording is lost: the run fails
    result.stderr.fnmatch_lines(["repro-proxy: the cassette was not written: *Is a directory*"])
    result.stdout.fnmatch_lines(["repro-proxy: recorded answers lost: *llm.jsonl could not be *"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert (project.path / CASSETTE).is_dir() and not list(
        (project.path / CASSETTE).parent.glob(".*")
    )
