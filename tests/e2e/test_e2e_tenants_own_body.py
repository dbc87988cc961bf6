"""In `shared` scope, an answer made with credentials the body carries for a third party (an MCP
tool's headers or OAuth token, a connector's), or resting on a reasoning item its owner passed
back by id, is never served to another tenant sending the same body: that tenant's request goes
upstream, where the third party checks the credentials and the upstream the id. The owner keeps
its own HITs; a tool carrying no credential stays shared. Real proxy and sim processes, the
official openai SDK."""

from __future__ import annotations

from typing import Any

import pytest
from openai import OpenAI

from tests.fixtures_procs import Proxy, Sim

CONFIGS = {"shared": ["--cache-scope", "shared"]}

MCP = {"type": "mcp", "server_label": "mail", "server_url": "https://mcp.example.com/sse"}
TOOLS: dict[str, list[dict[str, Any]]] = {
    "headers": [MCP | {"headers": {"Authorization": "Bearer owner-mcp-token"}}],
    "authorization": [MCP | {"authorization": "owner-oauth-token"}],
    "connector": [
        {
            "type": "mcp",
            "server_label": "gmail",
            "connector_id": "connector_gmail",
            "authorization": "ya29.owner-oauth-token",
            "require_approval": "never",
        }
    ],
}
TURN = {"role": "user", "content": "And what did the last one say?"}


def ask(proxy: Proxy, key: str, ns: str, **body: Any) -> tuple[str, str, str]:
    """X-Repro-Cache, X-Repro-Key and the answer's text, as the SDK reads them."""
    with OpenAI(
        base_url=proxy.v1,
        api_key=key,
        max_retries=0,
        default_headers={"X-Repro-Namespace": ns},
    ) as sdk:
        raw = sdk.responses.with_raw_response.create(model="o4-mini", **body)
    return raw.headers["X-Repro-Cache"], raw.headers["X-Repro-Key"], raw.parse().output_text


def owners_then_others(proxy: Proxy, sim: Sim, ns: str, **body: Any) -> tuple[str, str, int]:
    """Once the owner's answer is stored: the other tenant's X-Repro-Cache, whether its key is
    the owner's, and the upstream calls its request made."""
    state, key, text = ask(proxy, "sk-owner", ns, **body)
    assert state == "MISS"
    assert ask(proxy, "sk-owner", ns, **body) == ("HIT", key, text)  # the owner's own cache
    calls = len(sim.llm_requests())
    other, others_key, _ = ask(proxy, "sk-other", ns, **body)
    return other, "same key" if others_key == key else "own key", len(sim.llm_requests()) - calls


@pytest.mark.parametrize("shape", TOOLS)
def test_an_answer_fetched_with_the_owners_credentials_is_not_another_tenants(
    proxies: dict[str, Proxy], sim_process: Sim, ns: str, shape: str
) -> None:
    body = {"input": "Summarise my unread mail.", "tools": TOOLS[shape]}
    # asked upstream, where the third party checks the token; in the caller's own partition,
    # where the owner's token is not stored
    outcome = owners_then_others(proxies["shared"], sim_process, ns, **body)
    assert outcome == ("MISS", "own key", 1)
    assert sim_process.llm_requests()[-1]["headers"]["Authorization"] == "Bearer sk-other"


def test_an_answer_resting_on_the_owners_reasoning_is_not_another_tenants(
    proxies: dict[str, Proxy], sim_process: Sim, ns: str
) -> None:
    reasoning = {"type": "reasoning", "id": "rs_owner_0001", "summary": []}
    body = {"input": [TURN | {"content": "Read the notes."}, reasoning, TURN]}
    outcome = owners_then_others(proxies["shared"], sim_process, ns, **body)
    assert outcome == ("MISS", "own key", 1)  # the upstream decides whether it may read the id
    assert ask(proxies["shared"], "sk-other", ns, **body)[0] == "HIT"  # its own, kept apart


def test_a_tool_carrying_no_credential_stays_shared(
    proxies: dict[str, Proxy], sim_process: Sim, ns: str
) -> None:
    body = {"input": "What can this server do?", "tools": [MCP | {"headers": {}}]}
    assert owners_then_others(proxies["shared"], sim_process, ns, **body) == ("HIT", "same key", 0)
