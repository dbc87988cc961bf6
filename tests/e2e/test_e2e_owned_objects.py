"""In `shared` scope, an answer made of one account's own objects (an uploaded file, a vector
store, a stored prompt) is never served to another tenant who sends the same body: the upstream
would refuse that tenant the id, and the answer is made of the owner's data. Other answers stay
shared. Real proxy and sim processes, the official openai SDK."""

from __future__ import annotations

from typing import Any

from openai import OpenAI

from tests.fixtures_procs import Proxy, ProxyFactory, Sim

FILE_QUESTION = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Summarise the attached report."},
            {"type": "file", "file": {"file_id": "file-owner-report-1"}},
        ],
    }
]


def chat(proxy: Proxy, key: str, messages: list[dict[str, Any]]) -> tuple[str, str]:
    """The X-Repro-Cache state and the answer's text, as the SDK reads them."""
    with OpenAI(base_url=proxy.v1, api_key=key, max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=messages,  # type: ignore[arg-type]
        )
    return raw.headers["X-Repro-Cache"], raw.parse().choices[0].message.content or ""


def test_another_tenant_never_gets_an_answer_made_of_the_owners_file(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy("--cache-scope", "shared")
    state, owners = chat(proxy, "sk-owner", FILE_QUESTION)
    assert state == "MISS"
    assert chat(proxy, "sk-owner", FILE_QUESTION) == ("HIT", owners)  # the owner's own cache
    calls = len(sim.llm_requests())
    state, _ = chat(proxy, "sk-other", FILE_QUESTION)
    assert state == "MISS"  # asked upstream, which decides whether this account may read it
    assert len(sim.llm_requests()) == calls + 1
    assert chat(proxy, "sk-other", FILE_QUESTION)[0] == "HIT"  # its own answer, kept apart


def test_answers_made_of_the_request_alone_stay_shared(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy("--cache-scope", "shared")
    question = [{"role": "user", "content": "Which file_id names the report?"}]
    state, text = chat(proxy, "sk-owner", question)
    assert state == "MISS"
    assert chat(proxy, "sk-other", question) == ("HIT", text)
