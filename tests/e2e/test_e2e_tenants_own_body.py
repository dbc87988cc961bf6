"""In `shared` scope, an answer made with credentials the body carries for a third party (an MCP
tool's headers or OAuth token, a connector's), or resting on a reasoning item its owner passed
back by id, is never served to another tenant sending the same body: that tenant's request goes
upstream, where the third party checks the credentials and the upstream the id. The owner keeps
its own HITs; a tool carrying no credential stays shared. Nor does a store, an export or a
cassette keep those credentials: the upstream receives them, the key and the stored request
name their SHA-256, and a replayed cassette still answers the request that carries them. Real
proxy and sim processes, the official openai SDK."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import httpx
import orjson
import pytest

from tests.fixtures_procs import Proxy, ProxyFactory, Sim
from tests.hostile import Received, Scripted, completion, http_answer
from tests.shared_scope import owners_then_others, text_asker

TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CONFIGS = {"shared": ["--cache-scope", "shared", "--admin-token", TOKEN]}

URL_SECRET = "owner-url-key"  # some servers take a key in the URL's path
MCP = {
    "type": "mcp",
    "server_label": "mail",
    "server_url": f"https://mcp.example.com/s/{URL_SECRET}/sse",
}
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


ask = text_asker("o4-mini")
"""X-Repro-Cache, X-Repro-Key and the answer's text, as the SDK reads them."""


@pytest.mark.parametrize("shape", TOOLS)
def test_an_answer_fetched_with_the_owners_credentials_is_not_another_tenants(
    proxies: dict[str, Proxy], sim_process: Sim, ns: str, shape: str
) -> None:
    body = {"input": "Summarise my unread mail.", "tools": TOOLS[shape]}
    # asked upstream, where the third party checks the token; in the caller's own partition,
    # where the owner's token is not stored
    outcome = owners_then_others(ask, proxies["shared"], sim_process, ns, body)
    assert outcome == ("MISS", "own key", 1)
    assert sim_process.llm_requests()[-1]["headers"]["Authorization"] == "Bearer sk-other"


def test_an_answer_resting_on_the_owners_reasoning_is_not_another_tenants(
    proxies: dict[str, Proxy], sim_process: Sim, ns: str
) -> None:
    reasoning = {"type": "reasoning", "id": "rs_owner_0001", "summary": []}
    body = {"input": [TURN | {"content": "Read the notes."}, reasoning, TURN]}
    outcome = owners_then_others(ask, proxies["shared"], sim_process, ns, body)
    assert outcome == ("MISS", "own key", 1)  # the upstream decides whether it may read the id
    assert ask(proxies["shared"], "sk-other", ns, **body)[0] == "HIT"  # its own, kept apart


def test_a_tool_carrying_no_credential_stays_shared(
    proxies: dict[str, Proxy], sim_process: Sim, ns: str
) -> None:
    body = {"input": "What can this server do?", "tools": [MCP | {"headers": {}}]}
    outcome = owners_then_others(ask, proxies["shared"], sim_process, ns, body)
    assert outcome == ("HIT", "same key", 0)


@pytest.mark.parametrize("shape", TOOLS)
def test_no_export_holds_the_token_and_a_replayed_cassette_still_answers(
    proxies: dict[str, Proxy], sim_process: Sim, start_proxy: ProxyFactory, ns: str, shape: str
) -> None:
    body = {"input": f"Summarise my unread mail ({shape}).", "tools": TOOLS[shape]}
    secrets = [
        value
        for tool in TOOLS[shape]
        for value in [tool.get("authorization"), *tool.get("headers", {}).values()]
        if value
    ]
    state, _, text = ask(proxies["shared"], "sk-owner", ns, **body)
    assert state == "MISS"
    sent = str(sim_process.llm_requests()[-1]["body"])
    assert all(secret in sent for secret in secrets)  # the upstream got them as sent
    assert ("server_url" not in TOOLS[shape][0]) or URL_SECRET in sent
    exported = httpx.get(
        proxies["shared"].url + "/admin/export", params={"namespace": ns}, headers=ADMIN, timeout=10
    ).content
    assert exported.count(b"\n") == 1
    assert b"mail (" + shape.encode() in exported
    # Neither the request as kept nor the answer (the sim echoes the tools as OpenAI does,
    # without credentials and with the URL cut to its host) holds one.
    assert not any(secret.encode() in exported for secret in [*secrets, URL_SECRET]), exported
    request = orjson.dumps(orjson.loads(exported)["request"])
    digests = [hashlib.sha256(secret.encode()).hexdigest().encode() for secret in secrets]
    assert all(digest in request for digest in digests)  # what tells tokens apart

    replay = start_proxy(
        "--cache-scope", "shared", "--cache-mode", "replay", "--admin-token", TOKEN
    )
    imported = httpx.post(replay.url + "/admin/import", content=exported, headers=ADMIN, timeout=10)
    assert imported.json() == {"imported": 1}
    assert ask(replay, "sk-ci", ns, **body)[::2] == ("HIT", text)
    others = {"headers": {"Authorization": "Bearer x"}, "authorization": "x"}
    missed = httpx.post(
        replay.v1 + "/responses",
        json={"model": "o4-mini", **body, "tools": [tool | others for tool in TOOLS[shape]]},
        headers={"Authorization": "Bearer sk-ci", "X-Repro-Namespace": ns},
        timeout=10,
    )
    assert missed.status_code == 504  # another token is another request


def test_a_key_check_never_sends_a_tools_token_with_made_up_credentials(
    start_proxy: ProxyFactory,
) -> None:
    """Where a model list answers anyone, the key check asks whether the upstream serves the
    very request to made-up credentials. It asks with the request as a store keeps it: an open
    gateway would otherwise run the owner's MCP tools with the owner's token for a stranger."""

    async def write(writer: asyncio.StreamWriter, received: Received) -> None:
        models = {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]}
        listing = received.request_line.startswith("GET ")
        body = orjson.dumps(models) if listing else completion("Three unread.")
        writer.write(http_answer(body, "Content-Type: application/json"))
        await writer.drain()

    tool = MCP | {"headers": {"Authorization": "Bearer owner-mcp-token"}}
    asked = {"model": "gpt-4o-mini", "messages": [TURN], "tools": [tool]}
    with Scripted(write) as upstream:
        proxy = start_proxy("--cache-scope", "shared", upstream=upstream.v1)
        for _ in range(2):
            answer = httpx.post(
                proxy.v1 + "/chat/completions",
                json=asked,
                headers={"Authorization": "Bearer sk-owner"},
                timeout=10,
            )
            assert answer.status_code == 200
        posted = [r for r in upstream.received if r.request_line.startswith("POST ")]
    assert answer.headers["X-Repro-Cache"] == "HIT"
    strangers = [r for r in posted if r.headers.get("authorization") != "Bearer sk-owner"]
    assert strangers  # the check was made
    assert not any(b"owner-mcp-token" in r.body or URL_SECRET.encode() in r.body for r in strangers)
    assert all(b"owner-mcp-token" in r.body for r in posted if r not in strangers)
