"""A hosted container's network policy carries secrets in the body (`domain_secrets`, each
`{domain, name, value}`, the value injected into the container's requests to the domain): the
request is its tenant's own in `shared` scope, and the key, the stored request, an export and a
cassette name each value by its SHA-256, as they do an MCP tool's token (proxy/core/sealing.py).
The rule reads a credential field wherever a tool holds it, outside a function's JSON Schemas;
the installed SDK's request types are surveyed for fields documented as secrets, so that a new
one fails here until it is classified."""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Settings
from proxy.core import canonical
from proxy.core.call import Asked, Call, prepare_with
from proxy.core.policy import CacheMode, CacheScope
from proxy.core.sealing import CREDENTIALS, carries_credentials, sealed
from proxy.store.cassette import from_record, to_record
from tests.shared_scope import recorded_entry

RESPONSES = "/v1/responses"
SECRET = "ghp_owner-domain-secret"
POLICY = {
    "type": "allowlist",
    "allowed_domains": ["api.github.com"],
    "domain_secrets": [{"domain": "api.github.com", "name": "GITHUB_TOKEN", "value": SECRET}],
}
CODE = {"type": "code_interpreter", "container": {"type": "auto", "network_policy": POLICY}}
SHELL = {"type": "shell", "environment": {"type": "container_auto", "network_policy": POLICY}}
ASK = {"model": "gpt-5", "input": "List my open pull requests."}

SHAPES: dict[str, dict[str, Any]] = {
    "code interpreter": ASK | {"tools": [CODE]},
    "shell": ASK | {"tools": [{"type": "web_search"}, SHELL]},
    "additional_tools item": ASK
    | {"input": [{"type": "additional_tools", "tools": [CODE]}, {"role": "user", "content": "Go"}]},
    "tool_search_output item": ASK
    | {
        "input": [
            {"type": "tool_search_call", "call_id": "ts_1", "arguments": {}, "status": "completed"},
            {"type": "tool_search_output", "call_id": "ts_1", "tools": [SHELL]},
        ]
    },
    # one rule, not a list per type: a policy wherever a tool holds one
    "a tool type the proxy does not know": ASK
    | {"tools": [{"type": "browser", "sandbox": {"network_policy": POLICY}}]},
}

SHARED: dict[str, dict[str, Any]] = {
    "no network policy": ASK
    | {"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]},
    "an allowlist without secrets": ASK
    | {
        "tools": [
            {
                "type": "shell",
                "environment": {
                    "type": "container_auto",
                    "network_policy": {"type": "allowlist", "allowed_domains": ["pypi.org"]},
                },
            }
        ]
    },
    "network disabled": ASK
    | {
        "tools": [
            {
                "type": "code_interpreter",
                "container": {"type": "auto", "network_policy": {"type": "disabled"}},
            }
        ]
    },
    # a function's schema names the client's own fields: no credential
    "a function's schema": ASK
    | {
        "tools": [
            {
                "type": "function",
                "name": "deploy",
                "parameters": {
                    "type": "object",
                    "properties": {"domain_secrets": {"type": "array"}, "headers": {}},
                    "examples": [{"domain_secrets": [{"value": "x"}], "headers": {"a": "b"}}],
                },
                "output_schema": {"properties": {"authorization": {"type": "string"}}},
            }
        ]
    },
}


def digest(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def prepared(body: dict[str, Any], key: str = "sk-owner", **settings: Any) -> Call:
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {key}"}))
    configured = Settings(cache_scope=CacheScope.SHARED, **settings)
    raw = orjson.dumps(body)
    return prepare_with(configured, f"tenant-of-{key}", Asked.of(RESPONSES, "", raw, headers))


@pytest.mark.parametrize("body", SHAPES.values(), ids=SHAPES.keys())
def test_a_domain_secret_is_its_tenants_own_and_never_kept(body: dict[str, Any]) -> None:
    assert carries_credentials(canonical.parse_body(orjson.dumps(body)))
    owner = prepared(body)
    assert owner.key != prepared(body, "sk-other").key
    assert owner.key == prepared(body).key
    assert SECRET.encode() in owner.body  # the upstream gets it as sent
    assert SECRET.encode() not in owner.request
    assert digest(SECRET).encode() in owner.request
    assert b"GITHUB_TOKEN" in owner.request and b"api.github.com" in owner.request
    hidden = sealed(body)
    assert hidden is not None and hidden == sealed(body)  # stable: a cassette replays
    assert sealed(hidden, loaded=True) is None  # a cassette's line, as it is


@pytest.mark.parametrize("body", SHARED.values(), ids=SHARED.keys())
def test_a_container_holding_no_secret_stays_shared(body: dict[str, Any]) -> None:
    assert not carries_credentials(body)
    assert sealed(body) is None
    assert prepared(body).key == prepared(body, "sk-other").key


def test_the_key_tells_secrets_apart_but_not_their_digests() -> None:
    """Two end users of one API key with their own tokens ask for two answers; a client sending
    a secret's digest is not taken for its holder."""
    body = SHAPES["code interpreter"]

    def with_value(value: str) -> dict[str, Any]:
        secret = POLICY["domain_secrets"][0] | {"value": value}  # type: ignore[index]
        policy = POLICY | {"domain_secrets": [secret]}
        return ASK | {"tools": [CODE | {"container": {"type": "auto", "network_policy": policy}}]}

    keys = {
        prepared(b, "sk-app").key for b in (body, with_value("other"), with_value(digest(SECRET)))
    }
    assert len(keys) == 3


def test_a_cassette_line_holding_the_secret_is_sealed_when_loaded() -> None:
    """A hand-written or older line holding the value as sent loads as a recorded one does:
    keyed as the live request carrying it, holding its digest alone."""
    body = SHAPES["shell"]
    live = prepared(body, "sk-ci", cache_mode=CacheMode.REPLAY)
    entry = recorded_entry(live, "gpt-5")
    recorded = to_record(live.key, entry)
    assert SECRET not in orjson.dumps(recorded).decode()
    for line in (recorded, recorded | {"request": body}):
        loaded = from_record(line, "shared")
        assert loaded.key == live.key
        assert SECRET.encode() not in loaded.entry.request
        assert loaded.entry.request == live.request


# The SDK's request types for the routes the proxy caches (Responses, beta Responses, chat,
# completions, embeddings), and a field documented as a secret in them.
SURVEYED = (
    "responses/**/*param*.py",
    "chat/**/*param*.py",
    "shared_params/*.py",
    "beta/beta_*param*.py",
    "beta/response_create_params.py",
    "completion_create_params.py",
    "embedding_create_params.py",
)
DOCUMENTED_SECRET = re.compile(
    r"secret|password|credential|access token|api key|authenticat|bearer|private key", re.I
)
ENTRIES = {"domain", "name", "value"}  # a domain secret's: its `value` sealed, where it goes kept


def documented_secrets() -> set[tuple[str, str, str]]:
    """(file, class, field) of each request type's field whose docstring names a secret."""
    root = Path(openai.__file__).parent / "types"
    found = set()
    for pattern in SURVEYED:
        for path in root.glob(pattern):
            for cls in ast.walk(ast.parse(path.read_text())):
                if not isinstance(cls, ast.ClassDef):
                    continue
                for field, doc in zip(cls.body, [*cls.body[1:], None], strict=True):
                    if (
                        isinstance(field, ast.AnnAssign)
                        and isinstance(field.target, ast.Name)
                        and isinstance(doc, ast.Expr)
                        and isinstance(doc.value, ast.Constant)
                        and DOCUMENTED_SECRET.search(str(doc.value.value))
                    ):
                        found.add((path.name, cls.name, field.target.id))
    return found


def test_every_field_the_sdk_documents_as_a_secret_is_sealed() -> None:
    found = documented_secrets()
    assert {"domain_secrets", "authorization", "headers"} <= {field for *_, field in found}
    unread = {
        (path, cls, field)
        for path, cls, field in found
        if field not in CREDENTIALS and not (cls.endswith("DomainSecretParam") and field in ENTRIES)
    }
    assert unread == set(), "a new secret field: read it in proxy/core/sealing.py CREDENTIALS"


@pytest.mark.parametrize("odd", [SECRET, {"GITHUB_TOKEN": SECRET}, [SECRET]])
def test_a_secret_field_of_a_shape_the_sdk_does_not_give_is_sealed_whole(odd: Any) -> None:
    """The upstream refuses it, but the key and a store would hold it until then."""
    policy = POLICY | {"domain_secrets": odd}
    body = ASK | {"tools": [SHELL | {"environment": {"network_policy": policy}}]}
    call = prepared(body)
    assert SECRET.encode() in call.body and SECRET.encode() not in call.request
    assert call.key != prepared(body, "sk-other").key
