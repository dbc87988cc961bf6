"""What a drift check sends again (pure): nothing kept upstream, nothing done twice."""

from __future__ import annotations

import orjson

from proxy.core.reask import reasked
from proxy.core.routes import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES


def sent(kind: str, body: dict[str, object]) -> dict[str, object] | None:
    again = reasked(kind, orjson.dumps(body))
    return None if again is None else orjson.loads(again)


def test_a_response_kept_by_default_is_asked_again_unkept() -> None:
    body = {"input": "hi", "model": "m"}
    assert sent(RESPONSES, body) == {**body, "store": False}
    assert sent(RESPONSES, {**body, "store": True}) == {**body, "store": False}


def test_a_response_already_unkept_is_sent_as_it_was() -> None:
    body = orjson.dumps({"input": "hi", "model": "m", "store": False})
    assert reasked(RESPONSES, body) is body


def test_a_kept_chat_completion_is_asked_again_unkept_and_untagged() -> None:
    body = {"messages": [], "model": "m", "store": True, "metadata": {"run": "7"}}
    assert sent(CHAT, body) == {"messages": [], "model": "m"}


def test_a_chat_completion_not_kept_is_sent_byte_for_byte() -> None:
    body = orjson.dumps({"messages": [], "model": "m", "metadata": {"run": "7"}})
    assert reasked(CHAT, body) is body


def test_a_response_that_may_call_an_mcp_server_is_never_sent_again() -> None:
    mcp = {"type": "mcp", "server_label": "mail", "server_url": "https://127.0.0.1/mcp"}
    assert sent(RESPONSES, {"input": "send it", "tools": [mcp]}) is None
    added = {"type": "additional_tools", "tools": [{"type": "function", "name": "f"}, mcp]}
    assert sent(RESPONSES, {"input": ["hi", added], "store": False}) is None


def test_other_tools_and_hostile_tool_shapes_do_not_stop_a_check() -> None:
    tools: list[object] = [{"type": "function", "name": "mcp"}, "mcp", 5, {"type": ["mcp"]}]
    assert sent(RESPONSES, {"input": "x", "tools": tools, "store": False}) is not None
    assert sent(RESPONSES, {"input": "x", "tools": {"type": "mcp"}, "store": False}) is not None


def test_routes_that_keep_nothing_are_sent_as_they_were() -> None:
    for kind in (EMBEDDINGS, COMPLETIONS):
        body = b'{"input":"x","store":true}'
        assert reasked(kind, body) is body


def test_a_body_that_cannot_be_read_is_not_sent_again() -> None:
    assert reasked(RESPONSES, b"\xff not json") is None
    assert reasked(CHAT, b"[1, 2]") is None
