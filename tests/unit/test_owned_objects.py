"""Requests naming an account's own objects (files, vector stores, containers, stored prompts)
are keyed in their tenant's partition even in `shared` scope (proxy/core/owned.py): their answer
is made of data only the owner's account can read, so another tenant sending the same body must
not be served it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Settings
from proxy.core import canonical
from proxy.core.call import Asked, prepare_with
from proxy.core.owned import names_owned_objects
from proxy.core.policy import CacheMode, CacheScope

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
FILE_PART = {"type": "file", "file": {"file_id": "file-abc123"}}

OWNED: list[tuple[str, dict[str, Any]]] = [
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": [FILE_PART]}]}),
    (
        RESPONSES,
        {
            "model": "m",
            "input": [
                {"role": "user", "content": [{"type": "input_file", "file_id": "file-abc123"}]}
            ],
        },
    ),
    (
        RESPONSES,
        {
            "model": "m",
            "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f-1"}]}],
        },
    ),
    (
        RESPONSES,
        {
            "model": "m",
            "input": "q",
            "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}],
        },
    ),
    (
        RESPONSES,
        {
            "model": "m",
            "input": "q",
            "tools": [{"type": "code_interpreter", "container": "cntr_1"}],
        },
    ),
    (
        RESPONSES,
        {
            "model": "m",
            "input": "q",
            "tools": [
                {"type": "code_interpreter", "container": {"type": "auto", "file_ids": ["f-2"]}}
            ],
        },
    ),
    (RESPONSES, {"model": "m", "input": "q", "prompt": {"id": "pmpt_1", "version": "2"}}),
]

NOT_OWNED: list[tuple[str, dict[str, Any]]] = [
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": "what is a file_id?"}]}),
    (  # a schema's property named file_id holds no id
        CHAT,
        {
            "model": "m",
            "messages": [{"role": "user", "content": "q"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "s",
                    "schema": {
                        "type": "object",
                        "properties": {"file_id": {"type": "string"}},
                        "required": ["file_id"],
                    },
                },
            },
        },
    ),
    (
        RESPONSES,
        {
            "model": "m",
            "input": "q",
            "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}],
        },
    ),
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": "q\u00e9"}]}),
]


def key_for(route: str, raw: bytes, api_key: str, mode: CacheMode = CacheMode.READWRITE) -> str:
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {api_key}"}))
    settings = Settings(cache_scope=CacheScope.SHARED, cache_mode=mode)
    return prepare_with(settings, f"tenant-of-{api_key}", Asked.of(route, "", raw, headers)).key


@pytest.mark.parametrize(("route", "body"), OWNED)
def test_a_request_naming_an_accounts_object_is_keyed_per_tenant_in_shared_scope(
    route: str, body: dict[str, Any]
) -> None:
    raw = orjson.dumps(body)
    assert names_owned_objects(raw, canonical.parse_body(raw))
    assert key_for(route, raw, "sk-owner") != key_for(route, raw, "sk-other")
    assert key_for(route, raw, "sk-owner") == key_for(route, raw, "sk-owner")


@pytest.mark.parametrize(("route", "body"), NOT_OWNED)
def test_other_requests_stay_shared(route: str, body: dict[str, Any]) -> None:
    raw = orjson.dumps(body)
    assert not names_owned_objects(raw, canonical.parse_body(raw))
    assert key_for(route, raw, "sk-owner") == key_for(route, raw, "sk-other")


def test_a_field_name_spelled_with_json_escapes_is_read_as_the_name_it_is() -> None:
    raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": [FILE_PART]}]})
    escaped = raw.replace(b'"file_id"', b'"file\\u005fid"')
    assert escaped != raw
    assert names_owned_objects(escaped, canonical.parse_body(escaped))
    assert key_for(CHAT, escaped, "sk-owner") != key_for(CHAT, escaped, "sk-other")
    # The same request, however spelled: the owner's key for one is its key for the other.
    assert key_for(CHAT, escaped, "sk-owner") == key_for(CHAT, raw, "sk-owner")


def test_replay_keeps_them_in_the_shared_partition_its_cassette_was_loaded_in() -> None:
    raw = orjson.dumps(OWNED[0][1])
    replayed = [key_for(CHAT, raw, key, CacheMode.REPLAY) for key in ("sk-a", "sk-b")]
    assert replayed[0] == replayed[1]
    shared = canonical.request_key(
        CHAT, "shared", "", canonical.parse_body(orjson.dumps(OWNED[0][1] | {"seed": 12345}))
    )
    assert replayed[0] == shared
