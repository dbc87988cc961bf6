"""Sealing a gateway's credential in a body, a tool credential's JSON type, and a JSON body
shaped as an upload's key on a form route (pure logic; the e2e tests drive real processes)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from proxy.core import forms
from proxy.core.owned import tenants_own
from proxy.core.sealing import carries_credentials, in_body, sealed, sealed_values
from proxy.errors import InvalidParameter

PLAIN: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 5,
    "max_completion_tokens": 5,
    "prompt_cache_key": "user-42",
    "safety_identifier": "u-42",
    "metadata": {"run": "nightly", "passage": "p"},
    "logit_bias": {"50256": -100},
}


def digest(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def test_the_apis_own_fields_hold_no_credential() -> None:
    assert in_body(PLAIN) == [] and in_body(PLAIN["metadata"]) == []
    assert sealed(PLAIN) is None
    assert not carries_credentials(PLAIN) and not tenants_own(b"{}", PLAIN)


@pytest.mark.parametrize(
    "name", ["api_key", "apiKey", "azure_ad_token", "aws_secret_access_key", "password", "token"]
)
def test_a_gateways_credential_in_the_body_is_sealed_and_owned(name: str) -> None:
    body = {**PLAIN, name: "s3cret-value"}
    hidden = sealed(body)
    assert hidden is not None and hidden[name] == digest("s3cret-value")
    assert {k: v for k, v in hidden.items() if k != name} == PLAIN
    assert list(sealed_values(body, hidden)) == ["s3cret-value"]
    assert carries_credentials(body) and tenants_own(b"{}", body)
    assert sealed(hidden, loaded=True) == hidden  # a cassette's line stays as it is


def test_headers_and_metadata_are_sealed_value_by_value() -> None:
    body = {
        **PLAIN,
        "extra_headers": {"Authorization": "Bearer sk-inner", "X-Trace": "t-1"},
        "metadata": {"run": "nightly", "api_key": "sk-meta"},
    }
    hidden = sealed(body)
    assert hidden is not None
    assert hidden["extra_headers"] == {
        "Authorization": digest("Bearer sk-inner"),
        "X-Trace": digest("t-1"),
    }
    assert hidden["metadata"] == {"run": "nightly", "api_key": digest("sk-meta")}
    assert sorted(sealed_values(body, hidden)) == ["Bearer sk-inner", "sk-meta", "t-1"]


@pytest.mark.parametrize("empty", [None, "", {}, []])
def test_an_empty_credential_field_holds_none(empty: object) -> None:
    body = {**PLAIN, "api_key": empty, "extra_headers": empty}
    assert sealed(body) is None and not carries_credentials(body)


@pytest.mark.parametrize(("text", "other"), [("1", 1), ("true", True), ('{"a":1}', {"a": 1})])
def test_a_credential_of_another_json_type_is_another_digest(text: str, other: object) -> None:
    as_text, as_other = sealed({"api_key": text}), sealed({"api_key": other})
    assert as_text is not None and as_other is not None
    assert as_text["api_key"] == digest(text)  # a string's digest is what it always was
    assert as_other["api_key"] != as_text["api_key"]
    tool = {"type": "mcp", "server_label": "s", "headers": {"X-Key": text}}
    retyped = {**tool, "headers": {"X-Key": other}}
    assert sealed({"tools": [tool]}) != sealed({"tools": [retyped]})


FILE = {"sha256": "0" * 64, "bytes": 10, "extension": ".png", "type": "image/png"}


@pytest.mark.parametrize("value", [FILE, [FILE], ["a", FILE]])
def test_a_json_body_shaped_as_an_uploads_key_is_refused(value: object) -> None:
    with pytest.raises(InvalidParameter) as refused:
        forms.check_json({"model": "gpt-image-1", "prompt": "p", "image": value})
    assert refused.value.param == "image"


@pytest.mark.parametrize(
    "value",
    [
        {"image_url": "https://example.com/a.png"},
        [{"file_id": "file-1"}],
        {k: v for k, v in FILE.items() if k != "type"},
        {**FILE, "note": "x"},
        {"nested": FILE},
    ],
)
def test_other_json_bodies_on_a_form_route_pass(value: object) -> None:
    forms.check_json({"model": "gpt-image-1", "prompt": "p", "images": value})
