"""The pytest plugin's proxy listens on 127.0.0.1 for the length of a session: on a shared CI
runner or a workstation, another local user, or a web page in the developer's browser, can reach
it. Only the session's own user, asking as a program does, may use it: nobody else records into
the cassette that gets committed, reads what was recorded, or fails a test with a miss."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.e2e.test_pytest_plugin import ASKING, CASSETTE, RECORDING_KEY, run
from tests.egress_peers import Tinyproxy
from tests.fixtures_procs import Sim

OTHER_USER = 65534  # nobody
INTRUDER = """
import json, os, pathlib, subprocess, urllib.request, urllib.error

from llm_helpers import ask

def intrude(content, *headers, user=None):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%%{http_code}", "--max-time", "20",
            "-H", "Authorization: Bearer sk-intruder", "-H", "Content-Type: application/json",
            "-d", json.dumps(body)]
    for header in headers:
        argv += ["-H", header]
    argv.append(os.environ["OPENAI_BASE_URL"] + "/chat/completions")
    kwargs = {} if user is None else {"user": user, "group": user, "extra_groups": []}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, **kwargs)
    return done.stdout

def test_answers_and_intruders():
    assert ask("Name a colour.")
    seen = {
        "other user": intrude("Planted by another user.", user=%(user)d),
        "other user asking the same": intrude("Name a colour.", user=%(user)d),
        "web page": intrude("Planted by a page.", "Origin: https://evil.example"),
        "rebound name": intrude("Planted by a rebound name.", "Host: evil.example"),
        "own user": intrude("Name a colour."),
    }
    pathlib.Path("intruders.json").write_text(json.dumps(seen))
"""


FIRST = """
from llm_helpers import ask

def test_first():
    assert ask("Name a colour.")
"""


@pytest.fixture
def intruding(project: pytest.Pytester) -> pytest.Pytester:
    if os.geteuid() != 0 or shutil.which("curl") is None:
        pytest.skip("acting as another local user needs root and curl")
    os.chmod(project.path, 0o755)  # the other user needs no access to it, only to curl
    project.makepyfile(llm_helpers=ASKING)
    project.makepyfile(test_intruders=INTRUDER % {"user": OTHER_USER})
    return project


def outcomes(project: pytest.Pytester) -> dict[str, str]:
    import orjson

    found: dict[str, str] = orjson.loads((project.path / "intruders.json").read_bytes())
    return found


@pytest.mark.parametrize("mode", ["once", "none"])
def test_only_the_sessions_own_user_asking_as_a_program_reaches_its_proxy(
    intruding: pytest.Pytester, sim: Sim, mode: str
) -> None:
    if mode == "none":  # replay: record the one answer first
        intruding.makepyfile(test_first=FIRST)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("OPENAI_API_KEY", RECORDING_KEY)
            first = run(intruding, "--llm-record-mode=once", f"--llm-upstream={sim.v1}",
                        "test_first.py")  # fmt: skip
        first.assert_outcomes(passed=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", RECORDING_KEY)
        done = run(intruding, f"--llm-record-mode={mode}", f"--llm-upstream={sim.v1}", "-p",
                   "no:randomly", "test_intruders.py")  # fmt: skip
    # In replay, an intruder's miss would have failed the test running at that moment.
    done.assert_outcomes(passed=1)
    seen = outcomes(intruding)
    assert seen == {
        "other user": "403",
        "other user asking the same": "403",  # a recorded answer is not read either
        "web page": "403",
        "rebound name": "403",
        "own user": "200",
    }
    text = (intruding.path / CASSETTE).read_text()
    assert "Planted" not in text


def test_the_sdk_asks_the_sessions_proxy_directly_whatever_http_proxy_says(
    project: pytest.Pytester, sim: Sim, tmp_path: Path
) -> None:
    """A developer behind a corporate forward proxy has HTTP_PROXY set: the SDK must not send
    the session's requests, and the API key with them, to it (it cannot reach loopback). The
    proxy's own upstream calls go through it, as `serve`'s do."""
    project.makepyfile(llm_helpers=ASKING)
    project.makepyfile(test_first=FIRST)
    with Tinyproxy(tmp_path) as forward:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("OPENAI_API_KEY", RECORDING_KEY)
            for name in ("HTTP_PROXY", "http_proxy"):
                patch.setenv(name, forward.url)
            patch.setenv("NO_PROXY", "internal.example")
            done = run(project, "--llm-record-mode=once", f"--llm-upstream={sim.v1}")
        asked = forward.requests()
    done.assert_outcomes(passed=1)
    assert asked, "the upstream call went through the forward proxy"
    assert all(f"127.0.0.1:{sim.port}/" in line for line in asked), asked


def test_recording_from_a_plain_http_upstream_elsewhere_is_warned_of(
    project: pytest.Pytester,
) -> None:
    """The proxy forwards the user's API key to the upstream: over http:// to another host,
    anyone on the path reads it."""
    project.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    done = run(project, "--llm-record-mode=once", "--llm-upstream=http://192.0.2.1:9/v1")
    done.assert_outcomes(passed=1)
    done.stdout.fnmatch_lines(["*repro-proxy: warning: the API key goes in the clear*"])
    local = run(project, "--llm-record-mode=once", "--llm-upstream=http://127.0.0.1:9/v1")
    assert "in the clear" not in local.stdout.str()
