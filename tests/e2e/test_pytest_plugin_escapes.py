"""Calls that would leave the session's proxy, and the cassette, behind: the run failed none of
its tests and said it replayed, while the calls went to the network with the real key. An
upstream written here stands for the network and records what reaches it."""

from __future__ import annotations

import pytest

from tests.e2e.test_pytest_plugin import ASKING, run
from tests.hostile import Scripted, completion, fixed, http_answer

NETWORK = http_answer(completion("from the network"), "Content-Type: application/json")


def test_a_client_made_before_the_session_stops_the_run(project: pytest.Pytester) -> None:
    """An app module made its client at import, and a conftest imported it: the client kept
    the base URL it was made with, and its calls skipped the cassette."""
    project.makeconftest("from openai import OpenAI\n\nCLIENT = OpenAI()\n")
    project.makepyfile(
        test_app="""
from conftest import CLIENT

def test_asks():
    CLIENT.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])
"""
    )
    with Scripted(fixed(NETWORK)) as network, pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_BASE_URL", network.v1)
        patch.setenv("OPENAI_API_KEY", "sk-ci-key")
        done = run(project, "--llm-record-mode=none")
        assert network.received == []
    assert done.ret == pytest.ExitCode.USAGE_ERROR
    done.stderr.fnmatch_lines(["*OpenAI(*) was made before the session's proxy started*"])


def test_a_test_changing_the_base_url_fails_and_the_next_ones_stay_offline(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(llm_helpers=ASKING)
    with Scripted(fixed(NETWORK)) as network:
        project.makepyfile(
            test_order=f"""
import os
from llm_helpers import ask

def test_1_points_elsewhere():
    os.environ["OPENAI_BASE_URL"] = "{network.v1}"

def test_2_asks():
    ask("q")

def test_3_changes_it_with_monkeypatch(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "{network.v1}")  # put back at its teardown
"""
        )
        done = run(project, "--llm-record-mode=none", "-p", "no:randomly")
        assert network.received == []
    # test_1's teardown errs (the change), test_2 fails (its call missed), test_3 passes
    done.assert_outcomes(passed=2, errors=1, failed=1)
    done.stdout.fnmatch_lines(["*OPENAI_BASE_URL was changed during the session*"])


def test_a_call_after_the_last_test_fails_the_run(project: pytest.Pytester) -> None:
    """A thread the last test left behind asked after every test's phase had been checked:
    its miss failed nothing, and the run passed."""
    project.makepyfile(llm_helpers=ASKING)
    project.makeconftest(
        """
import pytest

LEFT = []

@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    for thread in LEFT:
        thread.join(30)
"""
    )
    project.makepyfile(
        test_late="""
import threading, time
from conftest import LEFT
from llm_helpers import ask

def late():
    time.sleep(0.5)
    try:
        ask("asked late")
    except Exception:
        pass  # swallowed, as code under test may

def test_leaves_a_thread():
    LEFT.append(threading.Thread(target=late))
    LEFT[-1].start()
"""
    )
    done = run(project, "--llm-record-mode=none")
    assert done.ret == pytest.ExitCode.TESTS_FAILED
    done.stderr.fnmatch_lines(["after the last test: *"])
