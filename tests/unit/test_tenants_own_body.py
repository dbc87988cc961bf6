"""In `shared` scope a request is keyed in its tenant's own partition when its body carries
credentials for a third party (an MCP tool's headers or OAuth token, a connector) or passes back
a reasoning item its account owns (proxy/core/owned.py): the answer is what those credentials
fetched, or rests on the owner's stored reasoning, and must not reach a tenant who only sends
the same body. A tool naming no credential, and a request without reasoning items, stay shared."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Settings
from proxy.core import canonical
from proxy.core.call import Asked, prepare_with
from proxy.core.owned import carries_credentials, passes_reasoning
from proxy.core.policy import CacheMode, CacheScope

RESPONSES = "/v1/responses"
MCP = {"type": "mcp", "server_label": "crm", "server_url": "https://mcp.example.com/sse"}
TURN = [{"role": "user", "content": "What did we decide?"}]


def asking(**fields: Any) -> dict[str, Any]:
    return {"model": "o4-mini", "input": "Summarise my unread mail."} | fields


CREDENTIALED: dict[str, dict[str, Any]] = {
    "headers object": asking(tools=[MCP | {"headers": {"Authorization": "Bearer mcp-secret"}}]),
    "a custom header": asking(tools=[MCP | {"headers": {"X-Api-Key": "k-123"}}]),
    "authorization string": asking(tools=[MCP | {"authorization": "oauth-token"}]),
    "connector_id": asking(
        tools=[
            {
                "type": "mcp",
                "server_label": "gmail",
                "connector_id": "connector_gmail",
                "authorization": "ya29.token",
            }
        ]
    ),
    "connector_id alone": asking(
        tools=[{"type": "mcp", "server_label": "g", "connector_id": "connector_gmail"}]
    ),
    "beside other tools": asking(
        tools=[{"type": "web_search"}, MCP | {"headers": {"Authorization": "Bearer x"}}]
    ),
}

REASONING: dict[str, dict[str, Any]] = {
    "by id": asking(input=[*TURN, {"type": "reasoning", "id": "rs_owner_1", "summary": []}, *TURN]),
    "with a summary": asking(
        input=[
            {
                "type": "reasoning",
                "id": "rs_owner_1",
                "summary": [{"type": "summary_text", "text": "Looked at the notes."}],
            },
            *TURN,
        ]
    ),
    "encrypted": asking(
        input=[
            {"type": "reasoning", "summary": [], "encrypted_content": "gAAAAB-sealed"},
            *TURN,
        ],
        store=False,
    ),
}

SHARED: dict[str, dict[str, Any]] = {
    "no headers": asking(tools=[MCP]),
    "empty headers": asking(tools=[MCP | {"headers": {}}]),
    "null headers and authorization": asking(
        tools=[MCP | {"headers": None, "authorization": None}]
    ),
    "empty authorization": asking(tools=[MCP | {"authorization": ""}]),
    # a function's parameters may name a field `authorization` or `headers`: no credential
    "a function's schema": asking(
        tools=[
            {
                "type": "function",
                "name": "send",
                "parameters": {
                    "type": "object",
                    "properties": {"authorization": {"type": "string"}, "headers": {}},
                },
            }
        ]
    ),
    "plain turns": asking(input=TURN),
    "reasoning settings": asking(reasoning={"effort": "high", "summary": "auto"}),
    "a message item with an id": asking(
        input=[
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hi."}],
            },
            *TURN,
        ]
    ),
}


def key_for(raw: bytes, api_key: str, mode: CacheMode = CacheMode.READWRITE) -> str:
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {api_key}"}))
    settings = Settings(cache_scope=CacheScope.SHARED, cache_mode=mode)
    return prepare_with(settings, f"tenant-of-{api_key}", Asked.of(RESPONSES, "", raw, headers)).key


@pytest.mark.parametrize("body", CREDENTIALED.values(), ids=CREDENTIALED.keys())
def test_a_request_carrying_a_third_partys_credentials_is_keyed_per_tenant(
    body: dict[str, Any],
) -> None:
    raw = orjson.dumps(body)
    assert carries_credentials(canonical.parse_body(raw))
    assert key_for(raw, "sk-owner") != key_for(raw, "sk-other")
    assert key_for(raw, "sk-owner") == key_for(raw, "sk-owner")


@pytest.mark.parametrize("body", REASONING.values(), ids=REASONING.keys())
def test_a_request_passing_back_a_reasoning_item_is_keyed_per_tenant(
    body: dict[str, Any],
) -> None:
    raw = orjson.dumps(body)
    assert passes_reasoning(canonical.parse_body(raw))
    assert key_for(raw, "sk-owner") != key_for(raw, "sk-other")
    assert key_for(raw, "sk-owner") == key_for(raw, "sk-owner")


def test_a_reasoning_item_leaves_the_request_cacheable() -> None:
    """Every turn of an agent on a reasoning model passes its reasoning back: the owner keeps
    its HITs (only an `item_reference`, which holds nothing but the id, is never cached)."""
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer sk-owner"}))
    settings = Settings(cache_scope=CacheScope.SHARED)
    raw = orjson.dumps(REASONING["with a summary"])
    call = prepare_with(settings, "t", Asked.of(RESPONSES, "", raw, headers))
    assert call.plan.lookup and call.plan.store


@pytest.mark.parametrize("body", SHARED.values(), ids=SHARED.keys())
def test_a_request_naming_no_credential_nor_reasoning_stays_shared(body: dict[str, Any]) -> None:
    raw = orjson.dumps(body)
    parsed = canonical.parse_body(raw)
    assert not carries_credentials(parsed) and not passes_reasoning(parsed)
    assert key_for(raw, "sk-owner") == key_for(raw, "sk-other")


def test_a_field_spelled_with_json_escapes_is_read_as_the_field_it_is() -> None:
    raw = orjson.dumps(CREDENTIALED["headers object"]).replace(b'"headers"', b'"head\\u0065rs"')
    assert b'"headers"' not in raw
    assert key_for(raw, "sk-owner") != key_for(raw, "sk-other")


def test_replay_keeps_them_in_the_shared_partition_its_cassette_was_loaded_in() -> None:
    for body in (CREDENTIALED["headers object"], REASONING["by id"]):
        raw = orjson.dumps(body)
        replayed = {key_for(raw, key, CacheMode.REPLAY) for key in ("sk-a", "sk-b")}
        assert replayed == {canonical.request_key(RESPONSES, "shared", "", body)}
