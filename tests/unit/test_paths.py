"""The pass-through's request target: dot segments resolved, anything leaving /v1/ refused."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.paths import forward_target
from proxy.errors import InvalidPath


@pytest.mark.parametrize(
    "target",
    [
        "/v1/files/file-abc/content?x=1",
        "/v1/models",
        "/v1/",
        "/v1/models/meta-llama%2FLlama-3-8B",
        "/v1/files?purpose=fine-tune&after=file-1",
        "/v1/vector_stores/vs_1/files/file_2",
        "/v1/x/100%25",
    ],
)
def test_ordinary_paths_are_forwarded_unchanged(target: str) -> None:
    assert forward_target(target) == target


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/v1/./models", "/v1/models"),
        ("/v1/a/../models", "/v1/models"),
        ("/v1/a/%2e%2e/models", "/v1/models"),
        ("/v1/a/.%2E/models?q=../x", "/v1/models?q=../x"),
        ("/v1/files/..", "/v1/"),
        ("/v1/models#fragment", "/v1/models"),
        ("/v1/a%5Cb", "/v1/a%5Cb"),
        ("/v1/a\\b", "/v1/a%5Cb"),
        ('/v1/a b"<>', "/v1/a%20b%22%3C%3E"),
    ],
)
def test_dot_segments_resolve_and_odd_characters_are_encoded(target: str, forwarded: str) -> None:
    assert forward_target(target) == forwarded


@pytest.mark.parametrize(
    "target",
    [
        "/v1/../admin",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2E/%2E%2E/etc/passwd",
        "/v1/files/../../admin",
        "/v1/files/..%2f..%2fadmin",
        "/v1/files/..%2F..%2Fadmin",
        "/v1/files/..%5c..%5cadmin",
        "/v1/files/..\\..\\admin",
        "/v1/files/%252e%252e/admin",
        "/v1/files/%25252e%25252e%25252fadmin",
        "/v1/files/..;/admin",
        "/v1/a/.;x/b",
        "/v1/..",
        "/v1",
        "/",
        "/admin/v1/x",
        "/v1x/models",
        "http://evil.example/v1/models",
        "/v1/%zz",
        "/v1/%2",
    ],
)
def test_paths_leaving_v1_or_without_a_single_reading_are_refused(target: str) -> None:
    with pytest.raises(InvalidPath) as refused:
        forward_target(target)
    assert (refused.value.status, refused.value.code) == (400, "invalid_path")


def _segments(path: str) -> list[str]:
    """Every reading an upstream might make: decoded up to three times, `\\` and `;` too."""
    readings = [path]
    for _ in range(3):
        readings.append(unquote(readings[-1]))
    return [
        part.partition(";")[0]
        for reading in readings
        for part in reading.replace("\\", "/").split("/")
    ]


SEGMENT = st.text(alphabet="./\\%;2eEfF5cCa-_", max_size=12)


@given(st.lists(SEGMENT, max_size=6), st.text(alphabet="a=&.%/", max_size=8))
def test_no_forwarded_path_can_be_read_as_leaving_v1(segments: list[str], query: str) -> None:
    target = "/v1/" + "/".join(segments) + ("?" + query if query else "")
    try:
        forwarded = forward_target(target)
    except InvalidPath:
        return
    path = forwarded.partition("?")[0]
    assert path.startswith("/v1/")
    assert not {".", ".."} & set(_segments(path))
    assert forward_target(forwarded) == forwarded
