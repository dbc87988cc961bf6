"""A test that reads what the API lists (the models) before it asks: the pytest plugin
records the read beside the answers, and replays both offline; a read the cassette lacks
fails its test, even when its code swallows the error."""

from __future__ import annotations

import pytest

from tests.e2e.test_pytest_plugin import cassette_lines, record, run
from tests.e2e.test_pytest_plugin_cleanup import swallowing
from tests.fixtures_procs import Sim

READING = """
from openai import OpenAI

def test_picks_a_listed_model_then_asks_it():
    with OpenAI() as client:
        names = [model.id for model in client.models.list()]
        assert "gpt-4o-mini" in names
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Name a lake."}]
        )
        assert answer.choices[0].message.content
"""

READING_ANOTHER = swallowing(
    "test_checks_a_model_never_recorded_and_swallows_the_error",
    'client.models.retrieve("gpt-4o")',
)


def test_a_read_is_recorded_and_replayed_offline(project: pytest.Pytester, sim: Sim) -> None:
    project.makepyfile(test_reading=READING)
    recorded = record(project, sim)
    recorded.assert_outcomes(passed=1)
    assert "LLMReplayWarning" not in recorded.stdout.str()
    routes = sorted(str(line["route"]) for line in cassette_lines(project))
    assert routes == ["/v1/chat/completions", "GET /v1/models"]
    sim.reset()
    replayed = run(project)
    replayed.assert_outcomes(passed=1)
    assert sim.requests() == []


def test_a_read_the_cassette_lacks_fails_its_test(project: pytest.Pytester, sim: Sim) -> None:
    project.makepyfile(test_reading=READING)
    record(project, sim).assert_outcomes(passed=1)
    project.makepyfile(test_reading_another=READING_ANOTHER)
    replayed = run(project)
    replayed.assert_outcomes(passed=1, failed=1)
    replayed.stdout.fnmatch_lines(["*repro-proxy: GET /v1/models/gpt-4o found no stored answer*"])
