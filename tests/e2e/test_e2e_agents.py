"""An OpenAI Agents SDK run in its default Responses mode, recorded and then replayed offline.

The agent calls a function tool (forced on its first turn), gets the tool's output and answers:
two Responses calls per run, the second carrying the first's items. It runs once through a
recording proxy against a sim of its own, then, with that sim stopped, through a replaying
proxy sharing the Redis store: the replay must give the same tool call and the same answer,
streamed or not, without a byte reaching any upstream.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.fixtures_procs import Proxy, ProxyFactory, Sim, running_sim, stop

agents = pytest.importorskip("agents")

MODEL = "gpt-4o-mini"
QUESTION = "What is the weather in Paris?"


@pytest.fixture
def own_sim() -> Any:
    """A sim only this test uses, so it can be stopped halfway."""
    with running_sim() as sim:
        yield sim


def build_agent(client: AsyncOpenAI, calls: list[str]) -> Any:
    agents.set_tracing_disabled(True)  # tracing would export to the internet

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"Sunny in {city}."

    return agents.Agent(
        name="forecaster",
        instructions="Answer questions about the weather with the tool.",
        tools=[get_weather],
        model=agents.OpenAIResponsesModel(model=MODEL, openai_client=client),
        model_settings=agents.ModelSettings(tool_choice="required"),
    )


async def run(proxy: Proxy, streamed: bool) -> tuple[str, list[str], list[str]]:
    """The final answer, the tool's arguments and the item types of one run."""
    calls: list[str] = []
    async with AsyncOpenAI(
        base_url=proxy.v1, api_key="sk-agent", max_retries=0, timeout=10
    ) as client:
        agent = build_agent(client, calls)
        if streamed:
            result = agents.Runner.run_streamed(agent, QUESTION)
            async for _ in result.stream_events():
                pass
        else:
            result = await agents.Runner.run(agent, QUESTION)
    kinds = [type(item).__name__ for item in result.new_items]
    return str(result.final_output), calls, kinds


async def test_an_agents_run_recorded_against_the_sim_replays_with_the_sim_stopped(
    start_proxy: ProxyFactory, redis_url: str, own_sim: Sim
) -> None:
    shared = ("--store", redis_url, "--secret", "agents-secret-of-16-bytes")
    recorder = start_proxy(*shared, "--cache-mode", "record", upstream=own_sim.v1)
    recorded = {streamed: await run(recorder, streamed) for streamed in (False, True)}
    for answer, calls, kinds in recorded.values():
        assert kinds == ["ToolCallItem", "ToolCallOutputItem", "MessageOutputItem"]
        assert len(calls) == 1 and answer.endswith(".")
    assert own_sim.stats()["requests"]["/v1/responses"] == 4
    stop(own_sim.proc)
    stop(recorder.proc)

    replayer = start_proxy(*shared, "--cache-mode", "replay", upstream=own_sim.v1)
    for streamed, expected in recorded.items():
        assert await run(replayer, streamed) == expected
    assert replayer.metric("repro_requests_total", route="/v1/responses", cache="hit") == 4
    assert replayer.metric("repro_requests_total", route="/v1/responses", cache="error") == 0
