"""In `shared` scope, an answer resting on the owner's stored state (a web search's results, a
compaction, a code interpreter's container, an MCP approval of a request the body does not hold:
items the upstream reads by id or decrypts for the owner's account), or made under an access
program the owner's organization holds (a Daybreak cyber program, named or resolved by the
upstream unasked), is never served to another tenant sending the same body: that tenant's
request goes upstream, which checks the id or the entitlement. Items carrying their content
stay shared. Real proxy and sim processes, the official openai SDK."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.fixtures_procs import Proxy, Sim
from tests.shared_scope import owners_then_others, respond

TOKEN = "admin-secret"
CONFIGS = {"shared": ["--cache-scope", "shared", "--admin-token", TOKEN]}

TURN = {"role": "user", "content": "And what did it find?"}
APPROVAL = {"type": "mcp_approval_response", "approval_request_id": "mcpr_owner", "approve": True}
STORED: dict[str, dict[str, Any]] = {
    "web_search_call": {
        "type": "web_search_call",
        "id": "ws_owner",
        "status": "completed",
        "action": {"type": "search", "query": "our launch date"},
    },
    "file_search_call": {
        "type": "file_search_call",
        "id": "fs_owner",
        "queries": ["q3 plan"],
        "status": "completed",
    },
    "code_interpreter_call": {
        "type": "code_interpreter_call",
        "id": "ci_owner",
        "code": "print(open('/mnt/data/q3.csv').read())",
        "container_id": "cntr_owner",
        "outputs": None,
        "status": "completed",
    },
    "compaction": {"type": "compaction", "encrypted_content": "gAAAAB-owner-sealed"},
    "program": {
        "type": "program",
        "id": "prg_owner",
        "call_id": "call_p",
        "code": "tools.read()",
        "fingerprint": "opaque-owner",
    },
    "image_generation_call by id": {
        "type": "image_generation_call",
        "id": "ig_owner",
        "result": None,
        "status": "completed",
    },
    "mcp_approval_response": APPROVAL,
}
CALL = {"call_id": "call_1"}
CARRIED: dict[str, list[dict[str, Any]]] = {
    "function call and output": [
        {"type": "function_call", "name": "lookup", "arguments": "{}"} | CALL,
        {"type": "function_call_output", "output": "42"} | CALL,
    ],
    "approval with its request": [
        {
            "type": "mcp_approval_request",
            "id": "mcpr_owner",
            "arguments": "{}",
            "name": "read_mail",
            "server_label": "mail",
        },
        APPROVAL,
    ],
}


def ask(proxy: Proxy, key: str, ns: str, **body: Any) -> tuple[str, str, Any]:
    """X-Repro-Cache, X-Repro-Key and the answer's `access_programs`, as the SDK reads them,
    whole or from a stream's `response.completed`."""
    raw, answer = respond(proxy, key, ns, "o4-mini", body)
    if body.get("stream"):
        completed = [e for e in answer if e.type == "response.completed"]
        assert len(completed) == 1
        programs = completed[0].response.access_programs
    else:
        programs = answer.access_programs
    return raw.headers["X-Repro-Cache"], raw.headers["X-Repro-Key"], programs


@pytest.mark.parametrize("shape", STORED)
def test_an_answer_resting_on_the_owners_stored_items_is_not_another_tenants(
    proxies: dict[str, Proxy], sim_process: Sim, ns: str, shape: str
) -> None:
    body = {"input": [TURN | {"content": "Look it up."}, STORED[shape], TURN]}
    outcome = owners_then_others(ask, proxies["shared"], sim_process, ns, body)
    assert outcome == ("MISS", "own key", 1)  # the upstream decides whether it may read the id
    assert sim_process.llm_requests()[-1]["headers"]["Authorization"] == "Bearer sk-other"


@pytest.mark.parametrize("shape", CARRIED)
def test_items_carrying_their_content_stay_shared(
    proxies: dict[str, Proxy], sim_process: Sim, ns: str, shape: str
) -> None:
    body = {"input": [TURN, *CARRIED[shape]]}
    outcome = owners_then_others(ask, proxies["shared"], sim_process, ns, body)
    assert outcome == ("HIT", "same key", 0)


@pytest.fixture
def resolved(sim_process: Sim) -> Iterator[Callable[[Any], None]]:
    """Set what the sim resolves a request naming no program to (the organization's
    authorization, as the API resolves it); back to the implicit standard after the test."""

    def resolve(programs: Any) -> None:
        sim_process.control("POST", "access_programs", {"access_programs": programs})

    yield resolve
    resolve(None)


def test_a_request_naming_a_daybreak_program_is_its_organizations_own(
    proxies: dict[str, Proxy], sim_process: Sim, ns: str
) -> None:
    body = {"input": "Triage this exploit.", "access_programs": {"cyber": "daybreak_red"}}
    outcome = owners_then_others(ask, proxies["shared"], sim_process, ns, body)
    assert outcome == ("MISS", "own key", 1)  # the upstream checks the other's authorization


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_answer_made_under_a_program_resolved_unasked_is_not_shared(
    proxies: dict[str, Proxy],
    sim_process: Sim,
    ns: str,
    resolved: Callable[[Any], None],
    stream: bool,
) -> None:
    """The owner's organization is authorized for Daybreak Blue and names no program: the
    upstream answers under it. Another organization, not authorized, sending the same body
    must get the upstream's answer (standard, or a 403), never the owner's."""
    proxy, body = proxies["shared"], {"input": "Write a fuzzer for this parser.", "stream": stream}
    blue = {"cyber": "daybreak_blue"}
    resolved(blue)
    state, key, programs = ask(proxy, "sk-owner", ns, **body)
    assert (state, programs.model_dump()) == ("MISS", blue)
    resolved(None)  # the other organization's authorization: the implicit standard
    calls = len(sim_process.llm_requests())
    other, others_key, programs = ask(proxy, "sk-other", ns, **body)
    assert (other, others_key, programs) == ("MISS", key, None)  # the shared key, not stored
    assert len(sim_process.llm_requests()) == calls + 1
    # the standard answer the upstream gave the other is every tenant's again
    assert ask(proxy, "sk-owner", ns, **body)[:3:2] == ("HIT", None)


def test_an_explicit_standard_program_stays_shared(
    proxies: dict[str, Proxy], sim_process: Sim, ns: str
) -> None:
    body = {"input": "Explain this CVE.", "access_programs": {"cyber": "standard"}}
    outcome = owners_then_others(ask, proxies["shared"], sim_process, ns, body)
    assert outcome == ("HIT", "same key", 0)


MCP_TOKEN = "owner-mcp-oauth-token"


def test_a_tools_credentials_an_input_item_gives_are_neither_shared_nor_kept(
    proxies: dict[str, Proxy], sim_process: Sim, ns: str
) -> None:
    """An `additional_tools` item gives the model an MCP server with the owner's token: the
    answer is what the token fetched, and the token must not be stored."""
    mcp = {"type": "mcp", "server_label": "crm", "server_url": "https://mcp.example.com"}
    item = {
        "type": "additional_tools",
        "role": "developer",
        "tools": [mcp | {"authorization": MCP_TOKEN}],
    }
    body = {"input": [TURN | {"content": "List my open deals."}, item]}
    outcome = owners_then_others(ask, proxies["shared"], sim_process, ns, body)
    assert outcome == ("MISS", "own key", 1)
    assert MCP_TOKEN in str(sim_process.llm_requests()[-1]["body"])  # the upstream got it
    exported = httpx.get(
        proxies["shared"].url + "/admin/export",
        params={"namespace": ns},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    ).content
    assert exported.count(b"\n") == 2  # the owner's answer and the other's, apart
    assert MCP_TOKEN.encode() not in exported


CHATS: dict[str, dict[str, Any]] = {
    "fine-tuned model": {"model": "ft:gpt-4o-mini-2024-07-18:acme::9abcDEF1"},
    "custom voice": {
        "model": "gpt-4o-audio-preview",
        "modalities": ["text", "audio"],
        "audio": {"voice": {"id": "voice_owner"}, "format": "mp3"},
    },
    "previous audio answer": {
        "model": "gpt-4o-audio-preview",
        "messages": [
            {"role": "user", "content": "Read my note."},
            {"role": "assistant", "audio": {"id": "audio_owner_1"}},
        ],
    },
}


@pytest.mark.parametrize("shape", CHATS)
def test_a_chat_naming_an_organizations_model_voice_or_audio_is_not_anothers(
    proxies: dict[str, Proxy], sim_process: Sim, ns: str, shape: str
) -> None:
    """The upstream serves a fine-tuned model, a custom voice or a stored audio answer only to
    the organization that made it; a key of any other, which the model list vouches for, read
    its stored answers."""
    turn = [{"role": "user", "content": "Summarise ticket 4411."}]
    body: dict[str, Any] = {"messages": turn} | CHATS[shape]
    body["messages"] = [*body["messages"], *turn]
    states, keys = [], []
    for key in ("sk-owner", "sk-owner", "sk-other"):
        with OpenAI(
            base_url=proxies["shared"].v1,
            api_key=key,
            max_retries=0,
            default_headers={"X-Repro-Namespace": ns},
        ) as sdk:
            raw = sdk.chat.completions.with_raw_response.create(**body)
        states.append(raw.headers["X-Repro-Cache"])
        keys.append(raw.headers["X-Repro-Key"])
    assert states == ["MISS", "HIT", "MISS"]
    assert keys[0] == keys[1] != keys[2]
    assert sim_process.llm_requests()[-1]["headers"]["Authorization"] == "Bearer sk-other"
