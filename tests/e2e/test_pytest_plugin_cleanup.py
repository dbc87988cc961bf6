"""A test that cleans up what it made upstream (a stored response, a stored chat completion)
records and replays as one that does not: deleting is part of what the test does, not a reason
for its answers to leave the cassette, nor a call replay cannot answer."""

from __future__ import annotations

import pytest

from tests.e2e.test_pytest_plugin import CASSETTE, RECORDING_KEY, cassette_lines, record, run
from tests.fixtures_procs import Sim

CLEANING_UP = """
from openai import OpenAI

def test_a_response_made_and_deleted():
    with OpenAI() as client:
        made = client.responses.create(model="gpt-4o-mini", input="Name a colour.")
        assert made.output_text
        assert client.responses.retrieve(made.id).id == made.id
        client.responses.delete(made.id)

def test_a_stored_chat_completion_made_and_deleted():
    with OpenAI() as client:
        made = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Name a river."}], store=True
        )
        assert made.choices[0].message.content
        assert client.chat.completions.retrieve(made.id).id == made.id
        gone = client.chat.completions.delete(made.id)
        assert gone.deleted and gone.id == made.id
"""


def test_a_test_that_deletes_what_it_made_replays(project: pytest.Pytester, sim: Sim) -> None:
    project.makepyfile(test_cleanup=CLEANING_UP)
    recorded = record(project, sim)
    recorded.assert_outcomes(passed=2)
    routes = sorted(str(line["route"]) for line in cassette_lines(project))
    assert routes == ["/v1/chat/completions", "/v1/responses"]
    replayed = run(project)
    replayed.assert_outcomes(passed=2)


BEYOND = """
import openai
from openai import OpenAI

def test_uploads_a_file_and_swallows_errors():
    with OpenAI() as client:
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Name a lake."}]
        )
        assert answer.choices[0].message.content
        try:
            made = client.files.create(file=("notes.txt", b"hi"), purpose="assistants").id
        except openai.APIError:
            made = "file-none"  # the app's fallback: the test would pass replayed
        assert made.startswith("file-")
"""


def test_a_call_no_cassette_holds_warns_recording_and_fails_replaying(
    project: pytest.Pytester, sim: Sim
) -> None:
    """The user's view: recording, the test passes and is warned that it will not replay;
    replaying, it fails with that reason, although its code caught the SDK's error."""
    project.makepyfile(test_beyond=BEYOND)
    recorded = record(project, sim)
    recorded.assert_outcomes(passed=1, warnings=1)
    recorded.stdout.fnmatch_lines(
        ["*LLMReplayWarning: repro-proxy: POST /v1/files went to the upstream and is not in*"]
    )
    replayed = run(project)
    replayed.assert_outcomes(failed=1)
    replayed.stdout.fnmatch_lines(["*repro-proxy: POST /v1/files cannot be replayed*Mock that*"])
    with pytest.MonkeyPatch.context() as patch:  # recording again, the warning as an error
        patch.setenv("OPENAI_API_KEY", RECORDING_KEY)
        strict = run(
            project,
            "--llm-record-mode=all",
            f"--llm-upstream={sim.v1}",
            "-W",
            "error::proxy.testing.plugin.LLMReplayWarning",
        )
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(["*POST /v1/files went to the upstream*"])


def swallowing(name: str, call: str) -> str:
    """A test module whose one test makes `call` (with `client`) and swallows the SDK's error,
    as an app with a fallback does: without the plugin's watch its replay would pass."""
    return f"""
import openai
from openai import OpenAI

def {name}():
    with OpenAI() as client:
        try:
            {call}
        except openai.APIError:
            pass
"""


BY_ID = swallowing(
    "test_fetches_an_id_never_recorded_and_swallows_the_error",
    'client.responses.retrieve("resp_never_recorded")',
)


def test_a_fetch_by_id_the_cassette_lacks_fails_its_test(
    project: pytest.Pytester, sim: Sim
) -> None:
    project.makepyfile(test_cleanup=CLEANING_UP)
    record(project, sim).assert_outcomes(passed=2)
    project.makepyfile(test_by_id=BY_ID)
    replayed = run(project)
    replayed.assert_outcomes(passed=2, failed=1)
    replayed.stdout.fnmatch_lines(
        ["*repro-proxy: GET /v1/responses/resp_never_recorded found no stored answer*"]
    )


def test_new_episodes_answers_the_cassettes_ids_itself(project: pytest.Pytester, sim: Sim) -> None:
    """Recording what is missing beside a cassette, a test's fetch and deletion of what the
    cassette answered are the cassette's to answer: the upstream deleted those objects when the
    cassette was recorded. The cassette comes out as it went in."""
    project.makepyfile(test_cleanup=CLEANING_UP)
    record(project, sim).assert_outcomes(passed=2)
    before = (project.path / CASSETTE).read_bytes()
    sim.reset()
    again = record(project, sim, "new_episodes")
    again.assert_outcomes(passed=2)
    assert sim.requests() == []  # every call answered from the cassette
    assert (project.path / CASSETTE).read_bytes() == before
