"""In `shared` scope a Responses request is its tenant's own when an input item's content is the
owner's stored state, read by id or decrypted for the owner's account (a web search's results,
a compaction, a code interpreter's container, an MCP approval answering a request the body does
not hold), when it names another owned object (a container, a skill, a Secure MCP Tunnel), or
when it names an access program beyond `standard` (proxy/core/owned.py). An answer the upstream
made under such a program unasked is read as one (`entitled`), whole or streamed. Items that
carry their content in the body stay shared. The SDK's input item types are the reference."""

from __future__ import annotations

import typing
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from openai.types.responses import response_input_item_param

from proxy.config import Settings
from proxy.core import canonical
from proxy.core.call import Asked, facts_of, prepare_with
from proxy.core.owned import (
    SELF_CONTAINED,
    entitled,
    names_owned_objects,
    names_program,
    passes_stored_items,
)
from proxy.core.policy import CacheScope
from proxy.core.routes import RESPONSES
from proxy.core.sealing import carries_credentials, sealed
from proxy.core.sse import StreamRecorder
from proxy.tools.sim.responses import answer_of, events
from proxy.tools.sim.state import SimState

TURN = {"role": "user", "content": "Go on."}
APPROVAL = {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": True}
ASKED = {
    "type": "mcp_approval_request",
    "id": "mcpr_1",
    "arguments": "{}",
    "name": "read_mail",
    "server_label": "mail",
}

STORED: dict[str, dict[str, Any]] = {
    "web_search_call": {
        "type": "web_search_call",
        "id": "ws_1",
        "status": "completed",
        "action": {"type": "search", "query": "our launch date"},
    },
    "file_search_call": {
        "type": "file_search_call",
        "id": "fs_1",
        "queries": ["q3 plan"],
        "status": "completed",
    },
    "code_interpreter_call": {
        "type": "code_interpreter_call",
        "id": "ci_1",
        "code": "print(1)",
        "container_id": "cntr_owner",
        "outputs": None,
        "status": "completed",
    },
    "compaction": {"type": "compaction", "encrypted_content": "gAAAAB-sealed"},
    "reasoning": {"type": "reasoning", "id": "rs_1", "summary": []},
    "program": {
        "type": "program",
        "id": "prg_1",
        "call_id": "call_p",
        "code": "1",
        "fingerprint": "opaque",
    },
    "image_generation_call without its result": {
        "type": "image_generation_call",
        "id": "ig_1",
        "result": None,
        "status": "completed",
    },
    "mcp_approval_response alone": APPROVAL,
    "mcp_approval_response to another request": APPROVAL,
    "a type not known": {"type": "memory_recall", "id": "mem_1"},
    "no type nor role": {"id": "msg_1", "content": "x", "status": "completed"},
}
STORED_INPUTS: dict[str, list[dict[str, Any]]] = {
    name: [TURN, item, TURN] for name, item in STORED.items()
}
STORED_INPUTS["mcp_approval_response to another request"] = [
    TURN,
    ASKED | {"id": "mcpr_2"},
    APPROVAL,
]

CALL = {"call_id": "call_1"}
CARRIED: dict[str, list[dict[str, Any]]] = {
    "function call and output": [
        {"type": "function_call", "name": "f", "arguments": "{}"} | CALL,
        {"type": "function_call_output", "output": "42"} | CALL,
    ],
    "custom tool call and output": [
        {"type": "custom_tool_call", "name": "g", "input": "x"} | CALL,
        {"type": "custom_tool_call_output", "output": "y"} | CALL,
    ],
    "computer call output": [
        {
            "type": "computer_call_output",
            "output": {"type": "computer_screenshot", "image_url": "data:image/png;base64,AA"},
        }
        | CALL
    ],
    "local shell": [
        {
            "type": "local_shell_call",
            "id": "ls_1",
            "status": "completed",
            "action": {"type": "exec", "command": ["ls"], "env": {}},
        }
        | CALL,
        {"type": "local_shell_call_output", "id": "ls_1", "output": "{}"},
    ],
    "shell": [
        {"type": "shell_call", "action": {"commands": ["ls"]}} | CALL,
        {"type": "shell_call_output", "output": []} | CALL,
    ],
    "apply patch": [
        {
            "type": "apply_patch_call",
            "status": "completed",
            "operation": {"type": "delete_file", "path": "a"},
        }
        | CALL,
        {"type": "apply_patch_call_output", "status": "completed"} | CALL,
    ],
    "mcp list and call": [
        {"type": "mcp_list_tools", "id": "mcpl_1", "server_label": "s", "tools": []},
        {
            "type": "mcp_call",
            "id": "mcp_1",
            "arguments": "{}",
            "name": "n",
            "server_label": "s",
            "output": "ok",
            "approval_request_id": "mcpr_1",
        },
    ],
    "an approval with its request": [ASKED, APPROVAL],
    "image generation call with its result": [
        {"type": "image_generation_call", "id": "ig_1", "result": "iVBOR", "status": "completed"}
    ],
    "tool search": [
        {"type": "tool_search_call", "arguments": {}} | CALL,
        {"type": "tool_search_output", "tools": []} | CALL,
    ],
    "settings items": [
        {"type": "additional_tools", "role": "developer", "tools": []},
        {"type": "configuration_update", "reasoning": {"effort": "low"}},
        {"type": "compaction_trigger"},
    ],
    "program output": [
        {"type": "program_output", "id": "po_1", "result": "1", "status": "completed"} | CALL
    ],
    "untyped message": [{"role": "user", "content": "hi"}],
}


def key_for(body: dict[str, Any], api_key: str, route: str = RESPONSES) -> str:
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {api_key}"}))
    settings = Settings(cache_scope=CacheScope.SHARED)
    raw = orjson.dumps({"model": "o4-mini"} | body)
    return prepare_with(settings, "tenant-of-" + api_key, Asked.of(route, "", raw, headers)).key


def own(body: dict[str, Any], route: str = RESPONSES) -> bool:
    return key_for(body, "sk-owner", route) != key_for(body, "sk-other", route)


@pytest.mark.parametrize("items", STORED_INPUTS.values(), ids=STORED_INPUTS.keys())
def test_an_item_read_from_the_owners_stored_state_keeps_the_request_its_own(
    items: list[dict[str, Any]],
) -> None:
    assert passes_stored_items({"input": items})
    assert own({"input": items})


@pytest.mark.parametrize("items", CARRIED.values(), ids=CARRIED.keys())
def test_an_item_carrying_its_content_stays_shared(items: list[dict[str, Any]]) -> None:
    assert not passes_stored_items({"input": [TURN, *items]})
    assert not own({"input": [TURN, *items]})


@pytest.mark.parametrize(
    "items",
    [
        [{"type": ["message"], "content": "x"}],
        [ASKED | {"id": ["mcpr_1"]}, APPROVAL | {"approval_request_id": ["mcpr_1"]}],
        [APPROVAL | {"approval_request_id": {"id": "mcpr_1"}}],
    ],
    ids=["a listed type", "a listed request id", "an object for an id"],
)
def test_a_type_or_id_that_is_no_string_is_no_known_one(items: list[dict[str, Any]]) -> None:
    """Hashing them raised out of `prepare`: an internal error for a body the upstream would
    refuse with a 400."""
    assert passes_stored_items({"input": items})
    assert own({"input": items})


def test_an_approval_continuing_a_response_is_left_to_the_chain_rules() -> None:
    """The request it answers is in the response continued, which only a tenant that was
    answered with it may continue from the cache (proxy/server/chains.py)."""
    body = {"input": [APPROVAL], "previous_response_id": "resp_owner"}
    assert not passes_stored_items(body)


def _type_of(item: Any) -> str | None:
    hint = typing.get_type_hints(item).get("type")
    literals = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    while literals and typing.get_origin(literals[0]) is not None:  # Optional[Literal[...]]
        literals = [arg for arg in typing.get_args(literals[0]) if arg is not type(None)]
    return literals[0] if literals and isinstance(literals[0], str) else None


def test_every_input_item_type_of_the_sdk_is_classified() -> None:
    """Every type the installed SDK's `ResponseInputItemParam` names is either one the body
    carries whole or one surveyed as read by id; a new one the proxy does not know yet is its
    tenant's own until it is read and classified."""
    sdk = {
        _type_of(item) or "message"
        for item in typing.get_args(response_input_item_param.ResponseInputItemParam)
    }
    surveyed = {item["type"] for item in STORED.values() if "type" in item} | {"item_reference"}
    conditional = {"image_generation_call", "mcp_approval_response"}
    assert sdk - SELF_CONTAINED - surveyed == set(), "classify it in proxy/core/owned.py"
    assert SELF_CONTAINED & surveyed == set()
    assert {"memory_recall"} == surveyed - sdk  # the made-up one
    assert conditional <= surveyed
    assert own({"input": [{"type": "item_reference", "id": "msg_1"}]})


OWNED_IDS: dict[str, dict[str, Any]] = {
    "a shell's container": {
        "tools": [
            {
                "type": "shell",
                "environment": {"type": "container_reference", "container_id": "cntr_1"},
            }
        ]
    },
    "a skill": {
        "tools": [
            {
                "type": "shell",
                "environment": {
                    "type": "container_auto",
                    "skills": [{"type": "skill_reference", "skill_id": "skill_1"}],
                },
            }
        ]
    },
    "a tunnel": {"tools": [{"type": "mcp", "server_label": "crm", "tunnel_id": "tun_1"}]},
    "a container citation": {
        "input": [
            {
                "type": "message",
                "role": "assistant",
                "content": [
                    {
                        "type": "output_text",
                        "text": "See the chart.",
                        "annotations": [{"type": "container_file_citation", "container_id": "c"}],
                    }
                ],
            }
        ]
    },
}


@pytest.mark.parametrize("body", OWNED_IDS.values(), ids=OWNED_IDS.keys())
def test_a_container_skill_or_tunnel_named_by_id_is_owned(body: dict[str, Any]) -> None:
    raw = orjson.dumps(body)
    assert names_owned_objects(raw, canonical.parse_body(raw))
    assert own({"input": "Run it."} | body)


PROGRAMS: dict[str, tuple[Any, bool]] = {
    "daybreak blue": ({"cyber": "daybreak_blue"}, True),
    "daybreak red": ({"cyber": "daybreak_red"}, True),
    "a domain the API adds later": ({"cyber": "standard", "bio": "vetted"}, True),
    "no object": ("daybreak_red", True),
    "standard": ({"cyber": "standard"}, False),
    "null": (None, False),
    "empty": ({}, False),
}


@pytest.mark.parametrize(("programs", "owned"), PROGRAMS.values(), ids=PROGRAMS.keys())
def test_a_program_beyond_standard_is_its_organizations_own(programs: Any, owned: bool) -> None:
    body = {"input": "Triage this exploit.", "access_programs": programs}
    assert names_program(body) is owned
    assert own(body) is owned
    assert entitled({"object": "response", "access_programs": programs}) is owned


def test_an_answer_made_under_a_program_says_so_whole_and_streamed() -> None:
    """The sim answers as the API does: a request naming no program gets what the
    organization is authorized for, null for the implicit standard fallback."""
    for resolved, expected in (({"cyber": "daybreak_blue"}, True), (None, False)):
        state = SimState(None, 0.0, 0.0, 0.0, frozenset(), access_programs=resolved)
        response, answer = answer_of({"model": "o4-mini", "input": "hi"}, state)
        facts = facts_of(orjson.dumps(response), True)
        assert facts is not None and facts[4] is expected
        recorder = StreamRecorder(1 << 20, RESPONSES)
        stream = b"".join(
            b"event: %s\ndata: %s\n\n" % (event["type"].encode(), orjson.dumps(event))
            for event in events(response, answer)
        )
        recorder.feed(stream)
        assert recorder.done and recorder.entitled is expected


def test_a_stream_whose_completed_event_alone_names_the_program_is_entitled() -> None:
    state = SimState(None, 0.0, 0.0, 0.0, frozenset())
    response, answer = answer_of({"model": "o4-mini", "input": "hi"}, state)
    listed = events(response, answer)
    listed[-1]["response"] = listed[-1]["response"] | {"access_programs": {"cyber": "daybreak_red"}}
    recorder = StreamRecorder(1 << 20, RESPONSES)
    recorder.feed(b"".join(b"data: %s\n\n" % orjson.dumps(event) for event in listed))
    assert recorder.done and recorder.entitled


TOKEN = "owner-oauth-token"
MCP = {"type": "mcp", "server_label": "crm", "server_url": "https://mcp.example.com/sse"}
TOOLS_IN_ITEMS: dict[str, dict[str, Any]] = {
    "additional_tools": {
        "type": "additional_tools",
        "role": "developer",
        "tools": [MCP | {"authorization": TOKEN}],
    },
    "tool_search_output": {
        "type": "tool_search_output",
        "execution": "client",
        "tools": [MCP | {"headers": {"Authorization": f"Bearer {TOKEN}"}}],
    },
}


@pytest.mark.parametrize("item", TOOLS_IN_ITEMS.values(), ids=TOOLS_IN_ITEMS.keys())
def test_credentials_of_a_tool_an_input_item_gives_are_the_tenants_and_sealed(
    item: dict[str, Any],
) -> None:
    """An item may give the model tools (`additional_tools`, a `tool_search_output`), with an
    MCP server's token: read only in the body's `tools` before, such a request was shared and
    its token stored."""
    body = {"input": [TURN, item]}
    assert carries_credentials(body)
    assert own(body)
    for loaded in (False, True):
        hidden = sealed(body, loaded)
        assert hidden is not None and TOKEN.encode() not in orjson.dumps(hidden)
        assert sealed(hidden, loaded=True) is None  # a cassette's line stays as it is
    bare = MCP | {"server_url": "https://mcp.example.com"}
    assert sealed({"input": [TURN, item | {"tools": [bare]}]}) is None


@pytest.mark.parametrize(
    ("model", "owned"),
    [
        ("ft:gpt-4o-mini-2024-07-18:acme::9abcDEF1", True),
        ("ft:gpt-4o-mini-2024-07-18:acme:support:9abcDEF1:ckpt-step-88", True),
        ("davinci:ft-acme-2023-01-01-00-00-00", True),
        ("gpt-4o-mini", False),
        ("o4-mini", False),
    ],
)
def test_a_fine_tuned_model_is_its_organizations_own(model: str, owned: bool) -> None:
    """Served only to the organization that trained it: any other key the upstream accepts
    (a model list vouches for a key as a whole) read the owner's answers from `shared`."""
    chat = {"model": model, "messages": [{"role": "user", "content": "Summarise ticket 4411."}]}
    raw = orjson.dumps(chat)
    assert names_owned_objects(raw, canonical.parse_body(raw)) is owned
    assert own(chat, "/v1/chat/completions") is owned
    assert own({"model": model, "input": "Summarise ticket 4411."}) is owned


CHAT_AUDIO: dict[str, tuple[dict[str, Any], bool]] = {
    "a custom voice": ({"audio": {"voice": {"id": "voice_1234"}, "format": "mp3"}}, True),
    "a previous audio answer": (
        {
            "messages": [
                {"role": "user", "content": "Say it."},
                {"role": "assistant", "audio": {"id": "audio_owner_1"}},
                {"role": "user", "content": "Again, slower."},
            ]
        },
        True,
    ),
    "a built-in voice": ({"audio": {"voice": "alloy", "format": "mp3"}}, False),
    "audio sent inline": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}
                    ],
                }
            ]
        },
        False,
    ),
}


@pytest.mark.parametrize(("fields", "owned"), CHAT_AUDIO.values(), ids=CHAT_AUDIO.keys())
def test_a_custom_voice_or_a_previous_audio_answer_is_its_accounts_own(
    fields: dict[str, Any], owned: bool
) -> None:
    """Named by id, they are the owner's (a voice made from its samples, an audio answer the
    upstream keeps): any other key read the owner's audio from `shared`."""
    chat = {"model": "gpt-4o-audio-preview", "modalities": ["text", "audio"]}
    chat |= {"messages": [{"role": "user", "content": "Read my note."}]} | fields
    raw = orjson.dumps(chat)
    assert names_owned_objects(raw, canonical.parse_body(raw)) is owned
    assert own(chat, "/v1/chat/completions") is owned
