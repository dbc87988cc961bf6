"""A test that cleans up what it made upstream (a stored response, a stored chat completion)
records and replays as one that does not: deleting is part of what the test does, not a reason
for its answers to leave the cassette, nor a call replay cannot answer."""

from __future__ import annotations

import pytest

from tests.e2e.test_pytest_plugin import cassette_lines, record, run
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
