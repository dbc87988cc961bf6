"""A content part's URL may be presigned (S3, GCS, Azure SAS, CloudFront): its query holds a
credential granting read access to a private object until it expires. The key names the URL,
but the stored request, an export and a cassette hold each signing parameter's digest, as
they do an MCP tool's token (proxy/core/sealing.py `sealed`); the upstream gets it as sent."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Settings
from proxy.core.call import Asked, Call, prepare_with
from proxy.core.echoes import secrets_of
from proxy.core.policy import CacheMode, CacheScope
from proxy.core.sealing import sealed
from proxy.store.cassette import from_record, to_record
from tests.shared_scope import recorded_entry

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
OBJECT = "https://bucket.example.com/private/scan.png"
SIGNED = {
    "s3": (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20261206%2Fus-east-1"
        "&X-Amz-Date=20261206T110000Z&X-Amz-Expires=900&X-Amz-Security-Token=IQoJb3JpZ2luSecret"
        "&X-Amz-SignedHeaders=host&X-Amz-Signature=5f1d8e0c6a4b3f2e1d0c9b8a7f6e5d4c3b2a1f0e",
        [
            "AKIAEXAMPLE%2F20261206%2Fus-east-1",
            "IQoJb3JpZ2luSecret",
            "5f1d8e0c6a4b3f2e1d0c9b8a7f6e5d4c3b2a1f0e",
        ],
    ),
    "gcs": (
        "x-goog-algorithm=GOOG4-RSA-SHA256&x-goog-credential=svc%40proj.iam%2F20261206"
        "&x-goog-expires=900&x-goog-signature=0a1b2c3d4e5f60718293a4b5c6d7e8f9deadbeef",
        ["svc%40proj.iam%2F20261206", "0a1b2c3d4e5f60718293a4b5c6d7e8f9deadbeef"],
    ),
    "azure sas": (
        "sv=2024-11-04&se=2026-12-06T12%3A00%3A00Z&sr=b&sp=r&sig=Zm9vYmFyU2lnbmF0dXJl%3D",
        ["Zm9vYmFyU2lnbmF0dXJl%3D"],
    ),
    "cloudfront": (
        "Expires=1796554800&Signature=Qm9ndXNTaWduYXR1cmU~abc__&Key-Pair-Id=K2JCJMDEHXQW5F",
        ["Qm9ndXNTaWduYXR1cmU~abc__", "K2JCJMDEHXQW5F"],
    ),
    "generic": ("w=512&token=tok_7f3a9c2b1e&SIGNATURE=AbCdEf123", ["tok_7f3a9c2b1e", "AbCdEf123"]),
}
KEPT = ("X-Amz-Expires=900", "se=2026-12-06", "sp=r", "Expires=1796554800", "w=512")


def digest(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def chat(url: str) -> dict[str, Any]:
    part = {"type": "image_url", "image_url": {"url": url, "detail": "low"}}
    content = [{"type": "text", "text": "What is this?"}, part]
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}


def chat_file(url: str) -> dict[str, Any]:
    part = {"type": "file", "file": {"file_url": url, "filename": "scan.pdf"}}
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [part]}]}


def responses_image(url: str) -> dict[str, Any]:
    part = {"type": "input_image", "image_url": url, "detail": "auto"}
    return {"model": "gpt-5", "input": [{"role": "user", "content": [part]}]}


def responses_file(url: str) -> dict[str, Any]:
    part = {"type": "input_file", "file_url": url}
    return {"model": "gpt-5", "input": [{"type": "message", "role": "user", "content": [part]}]}


def tool_output(url: str) -> dict[str, Any]:
    output = [{"type": "input_image", "image_url": url}]
    item = {"type": "function_call_output", "call_id": "call_1", "output": output}
    return {"model": "gpt-5", "input": [item]}


SHAPES = {
    "chat image": (CHAT, chat),
    "chat file": (CHAT, chat_file),
    "responses image": (RESPONSES, responses_image),
    "responses file": (RESPONSES, responses_file),
    "responses tool output": (RESPONSES, tool_output),
}


def prepared(route: str, body: dict[str, Any], **settings: Any) -> Call:
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer sk-owner"}))
    configured = Settings(cache_scope=CacheScope.SHARED, **settings)
    return prepare_with(configured, "owner", Asked.of(route, "", orjson.dumps(body), headers))


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("signed", SIGNED.values(), ids=SIGNED.keys())
def test_a_signed_urls_credential_is_sent_keyed_by_digest_and_never_kept(
    shape: tuple[str, Any], signed: tuple[str, list[str]]
) -> None:
    (route, make), (query, secrets) = shape, signed
    body = make(f"{OBJECT}?{query}")
    call = prepared(route, body)
    assert all(secret.encode() in call.body for secret in secrets)  # the upstream gets it
    kept = call.request.decode()
    for secret in secrets:
        assert secret not in kept
    assert OBJECT in kept  # the rest stays readable
    assert [part for part in KEPT if part in query] == [p for p in KEPT if p in kept]
    assert all(digest(secret) in kept for secret in secrets)
    hidden = sealed(body)
    assert hidden is not None and hidden == sealed(body)  # stable: a cassette replays
    assert sealed(hidden, loaded=True) is None  # a cassette's line, as it is
    other = make(f"{OBJECT}?{query.replace(secrets[-1], 'another')}")
    assert prepared(route, other).key != call.key  # two signatures, two keys


@pytest.mark.parametrize(
    "url",
    [
        f"{OBJECT}?w=512&format=png",
        OBJECT,
        "data:image/png;base64,iVBORw0KGgo=?sig=x&token=y",
        "ftp://host/file?token=y",
    ],
)
def test_a_url_holding_no_credential_is_kept_as_it_is(url: str) -> None:
    for route, make in SHAPES.values():
        body = make(url)
        assert sealed(body) is None
        assert url.encode() in prepared(route, body).request


def test_a_password_in_a_url_is_sealed_and_its_text_is_not() -> None:
    body = responses_file(f"https://user:hunter2-pass@{OBJECT[8:]}")
    hidden = orjson.dumps(sealed(body)).decode()
    assert "hunter2-pass" not in hidden and digest("hunter2-pass") in hidden
    assert "user:" in hidden and OBJECT[8:] in hidden
    said = f"Describe {OBJECT}?sig=abc please"  # a URL within text is what the text says
    assert sealed({"model": "m", "messages": [{"role": "user", "content": said}]}) is None


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_a_cassette_line_holding_a_signature_is_sealed_when_loaded(
    shape: tuple[str, Any],
) -> None:
    """A recorded line holds the digests and keys as the live request; a hand-written (or
    older) one holding the URL as sent loads the same way."""
    route, make = shape
    query, secrets = SIGNED["s3"]
    body = make(f"{OBJECT}?{query}")
    live = prepared(route, body, cache_mode=CacheMode.REPLAY)
    entry = recorded_entry(live, str(body["model"]))._replace(route=route)
    recorded = to_record(live.key, entry)
    assert not any(secret in orjson.dumps(recorded).decode() for secret in secrets)
    for line in (recorded, recorded | {"request": orjson.loads(live.body)}):  # as sent
        loaded = from_record(line, "shared")
        assert loaded.key == live.key
        assert loaded.entry.request == live.request
        assert not any(secret.encode() in loaded.entry.request for secret in secrets)


def test_an_answer_quoting_a_signature_alone_is_found() -> None:
    """An answer echoing the signature (a gateway's error, the model quoting the link) must
    not be stored: the needles of a signed URL's request hold each signing value, as written
    and decoded, besides the URL's path and query."""
    query, secrets = SIGNED["s3"]
    found = secrets_of((), orjson.dumps(chat(f"{OBJECT}?{query}")))
    for secret in secrets:
        assert secret.encode() in found
    assert b"AKIAEXAMPLE/20261206/us-east-1" in found
    assert b"AWS4-HMAC-SHA256" not in found  # the algorithm, alone, is no secret
