"""Unit tests of proxy.upstream.headers: which headers cross, and which answers are refused or
not stored for how they are framed. Every line of a repeated header counts."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.upstream.headers import (
    framing_error,
    request_headers,
    response_headers,
    status_error,
    undecoded,
    unstorable,
)


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_what_any_connection_line_names_is_dropped() -> None:
    sent = headers(
        ("Connection", "keep-alive"),
        ("Connection", "X-Hop"),
        ("X-Hop", "1"),
        ("X-End", "2"),
    )
    out = request_headers(sent)
    assert "X-Hop" not in out
    assert out["X-End"] == "2"
    assert "X-Hop" not in response_headers(sent, decoded=True)


@pytest.mark.parametrize(
    ("lines", "refused"),
    [
        ((), False),
        ((("Transfer-Encoding", "chunked"),), False),
        ((("Transfer-Encoding", "Chunked "),), False),
        ((("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "gzip")), True),
        ((("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")), True),
        ((("Transfer-Encoding", "chunked"), ("Content-Length", "5")), True),
    ],
)
def test_a_framing_is_read_from_every_transfer_encoding_line(
    lines: tuple[tuple[str, str], ...], refused: bool
) -> None:
    assert (framing_error(headers(*lines)) is not None) is refused


@pytest.mark.parametrize(
    ("status", "final"), [(200, True), (599, True), (101, False), (600, False)]
)
def test_only_a_final_status_is_an_answer(status: int, final: bool) -> None:
    assert (status_error(status) is None) is final


@pytest.mark.parametrize(
    ("coding", "decoded"),
    [(None, True), ("gzip", True), ("Deflate", True), ("identity", True), ("x-gzip", False)],
)
def test_a_coding_the_client_does_not_decode_is_kept(coding: str | None, decoded: bool) -> None:
    answer = headers(*([("Content-Encoding", coding)] if coding else []))
    assert (undecoded(answer) is None) is decoded
    assert ("Content-Encoding" in response_headers(answer, decoded=True)) is not decoded
    assert (unstorable(answer) is None) is decoded


def test_two_content_types_are_not_stored() -> None:
    assert unstorable(headers(("Content-Type", "application/json"))) is None
    two = headers(("Content-Type", "application/json"), ("Content-Type", "text/html"))
    assert unstorable(two) == "Content-Type twice"
