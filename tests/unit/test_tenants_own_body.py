"""In `shared` scope a request is keyed in its tenant's own partition when its body carries
credentials for a third party (an MCP tool's headers or OAuth token, a connector) or passes back
a reasoning item its account owns (proxy/core/owned.py): the answer is what those credentials
fetched, or rests on the owner's stored reasoning, and must not reach a tenant who only sends
the same body. A tool naming no credential, and a request without reasoning items, stay shared."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Settings
from proxy.core import canonical
from proxy.core.call import Asked, Call, prepare_with
from proxy.core.nearest import Request, readable
from proxy.core.owned import passes_stored_items
from proxy.core.policy import CacheMode, CacheScope, Enforce
from proxy.core.sealing import carries_credentials, sealed
from proxy.store.cassette import from_record, to_record
from proxy.testing.session import LLMSession, RecordMode
from tests.shared_scope import recorded_entry

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
    assert passes_stored_items(canonical.parse_body(raw))
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
    assert not carries_credentials(parsed) and not passes_stored_items(parsed)
    assert key_for(raw, "sk-owner") == key_for(raw, "sk-other")


def test_a_field_spelled_with_json_escapes_is_read_as_the_field_it_is() -> None:
    raw = orjson.dumps(CREDENTIALED["headers object"]).replace(b'"headers"', b'"head\\u0065rs"')
    assert b'"headers"' not in raw
    assert key_for(raw, "sk-owner") != key_for(raw, "sk-other")


def test_replay_keeps_them_in_the_shared_partition_its_cassette_was_loaded_in() -> None:
    for body in (CREDENTIALED["headers object"], REASONING["by id"]):
        raw = orjson.dumps(body)
        replayed = {key_for(raw, key, CacheMode.REPLAY) for key in ("sk-a", "sk-b")}
        keyed = sealed(body) or body
        assert replayed == {canonical.request_key(RESPONSES, "shared", "", keyed)}


def prepared(body: dict[str, Any], enforce: Enforce = Enforce.SEED) -> Call:
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer sk-app"}))
    settings = Settings(cache_scope=CacheScope.KEY, enforce=enforce)
    return prepare_with(settings, "t", Asked.of(RESPONSES, "", orjson.dumps(body), headers))


@pytest.mark.parametrize("enforce", [Enforce.SEED, Enforce.OFF])
@pytest.mark.parametrize("name", ["headers object", "a custom header", "authorization string"])
def test_the_upstream_gets_the_credentials_and_no_store_keeps_them(
    name: str, enforce: Enforce
) -> None:
    body = CREDENTIALED[name]
    secrets = [
        value
        for tool in body["tools"]
        for value in [tool.get("authorization"), *(tool.get("headers") or {}).values()]
        if value
    ]
    call = prepared(body, enforce)
    assert all(secret.encode() in call.body for secret in secrets)
    assert not any(secret.encode() in call.request for secret in secrets)
    for secret in secrets:
        assert hashlib.sha256(secret.encode()).hexdigest().encode() in call.request


def test_the_key_tells_tokens_apart_but_not_their_digests() -> None:
    """Two end users of one API key (one tenant) with their own OAuth tokens ask for two
    mailboxes; a client sending a token's digest is not taken for its holder."""
    tool = CREDENTIALED["authorization string"]["tools"][0]
    body = CREDENTIALED["authorization string"]
    other = body | {"tools": [tool | {"authorization": "another-users-token"}]}
    digest = "sha256:" + hashlib.sha256(b"oauth-token").hexdigest()
    posing = body | {"tools": [tool | {"authorization": digest}]}
    keys = {prepared(b).key for b in (body, other, posing)}
    assert len(keys) == 3
    assert prepared(body).key == prepared(body).key


def test_a_cassette_line_keeps_no_token_and_keys_as_the_live_request_does() -> None:
    """A recorded line (sealed) and a hand-written or older one (the token as sent) load
    alike: keyed as the live request carrying the token is, holding its digest alone."""
    body = CREDENTIALED["headers object"]
    live = prepare_with(
        Settings(cache_scope=CacheScope.SHARED, cache_mode=CacheMode.REPLAY),
        "t",
        Asked.of(
            RESPONSES,
            "",
            orjson.dumps(body),
            CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer sk-ci"})),
        ),
    )
    entry = recorded_entry(live, "o4-mini")
    recorded = to_record(live.key, entry)
    written = recorded | {"request": body}
    for line in (recorded, written):
        loaded = from_record(line, "shared")
        assert loaded.key == live.key
        assert b"mcp-secret" not in loaded.entry.request
        assert loaded.entry.request == live.request


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://mcp.zapier.com/api/mcp/s/KEY-IN-PATH/mcp", "https://mcp.zapier.com/sha256:"),
        ("https://mcp.example.com/sse?token=KEY-IN-QUERY", "https://mcp.example.com/sha256:"),
        ("https://user:KEY-AS-PASSWORD@mcp.example.com", "https://mcp.example.com/sha256:"),
        ("https://mcp.example.com", "https://mcp.example.com"),
        ("https://mcp.example.com/", "https://mcp.example.com/"),
        ("http://[KEY-no-parser-reads", "sha256:"),  # urlsplit raises: sealed whole
        ("KEY-and-no-host", "sha256:"),
    ],
)
def test_a_server_urls_path_is_sent_and_never_kept(url: str, kept: str) -> None:
    """Some servers take a key in the URL (OpenAI cuts the path from the response object for
    that reason): the upstream gets the URL, the key and the store its host and digest. A
    URL alone names no credential of an account: the request stays shared."""
    body = asking(tools=[MCP | {"server_url": url}])
    call = prepared(body)
    assert url.encode() in call.body
    stored = orjson.loads(call.request)["tools"][0]["server_url"]
    assert stored.startswith(kept) and "KEY" not in stored
    raw = orjson.dumps(body)
    assert key_for(raw, "sk-owner") == key_for(raw, "sk-other")
    if stored != url:
        assert stored == kept + hashlib.sha256(url.encode()).hexdigest()
        other = asking(tools=[MCP | {"server_url": url.replace("KEY", "OTHER")}])
        assert prepared(other).key != call.key
        assert sealed(orjson.loads(call.request), loaded=True) is None  # a cassette's, as it is


def test_the_plugins_miss_report_shows_no_token() -> None:
    """A test run's failure (printed in CI logs) shows the request the cassette lacks as a
    store keeps it: the token's digest, never the token."""
    body = CREDENTIALED["headers object"]
    tool = body["tools"][0]
    recorded = prepared(body | {"tools": [tool | {"headers": {"Authorization": "Bearer old"}}]})
    session = LLMSession(RecordMode.NONE, "tests/cassettes/llm.jsonl", "http://127.0.0.1:9/v1")
    session.recorded = [Request(recorded.route, recorded.model, "", "", readable(recorded.request))]
    report = session.explain([prepared(body)])
    assert "not in the cassette" in report and "sha256:" in report, report
    assert "mcp-secret" not in report
