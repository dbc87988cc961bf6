"""How a compressed request body is inflated: whole however it is split on arrival, in bounded
pieces, and refused unless it ends exactly where its compressed stream does."""

from __future__ import annotations

import gzip
import itertools
import zlib
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.inflate import MAX_MEMBERS, PIECE, Inflater
from proxy.errors import InvalidBody

TEXT = b'{"model": "m", "messages": [{"role": "user", "content": "hello"}]}' * 50


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def inflate(coding: str, parts: Iterable[bytes]) -> bytes:
    inflater = Inflater(coding)
    out = b"".join(piece for part in parts for piece in inflater.feed(part))
    inflater.finish()
    return out


WHOLE = {
    "gzip": gzip.compress(TEXT),
    "deflate": zlib.compress(TEXT),
    "raw-deflate": raw_deflate(TEXT),
}


@pytest.mark.parametrize("kind", WHOLE)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(gzip.compress(TEXT))), max_size=8))
def test_a_whole_body_inflates_the_same_however_it_arrives(kind: str, cuts: list[int]) -> None:
    body = WHOLE[kind]
    points = [0, *sorted(cut % (len(body) + 1) for cut in cuts), len(body)]
    parts = [body[start:end] for start, end in itertools.pairwise(points)]
    assert inflate(kind.removeprefix("raw-"), parts) == TEXT


@pytest.mark.parametrize("kind", WHOLE)
def test_a_body_cut_anywhere_before_its_end_is_refused(kind: str) -> None:
    body = WHOLE[kind]
    for end in range(1, len(body)):
        with pytest.raises(InvalidBody):
            inflate(kind.removeprefix("raw-"), [body[:end]])


# mtime=0: a test's id holds its parameters, and pytest-xdist's workers must collect one id
@pytest.mark.parametrize("tail", [b"\x00", b"\x1f", b"garbage", gzip.compress(b"", mtime=0)[:-1]])
def test_bytes_past_the_end_of_a_gzip_body_that_are_no_whole_member_are_refused(
    tail: bytes,
) -> None:
    with pytest.raises(InvalidBody):
        inflate("gzip", [gzip.compress(TEXT) + tail])


@pytest.mark.parametrize("tail", [b"\x00", b"x", zlib.compress(b"more")])
def test_a_deflate_body_is_one_stream_with_nothing_after_it(tail: bytes) -> None:
    with pytest.raises(InvalidBody):
        inflate("deflate", [zlib.compress(TEXT), tail])


def test_gzip_members_one_after_another_are_one_body() -> None:
    body = gzip.compress(TEXT[:100]) + gzip.compress(TEXT[100:])
    assert inflate("gzip", [body]) == TEXT
    assert inflate("gzip", [body[:10], body[10:]]) == TEXT


def test_members_are_bounded_in_number() -> None:
    empty = gzip.compress(b"")
    assert inflate("gzip", [empty * MAX_MEMBERS]) == b""
    with pytest.raises(InvalidBody, match="members"):
        inflate("gzip", [empty * (MAX_MEMBERS + 1)])


def test_an_empty_body_is_empty() -> None:
    assert inflate("gzip", []) == b""


def test_a_bomb_inflates_in_bounded_pieces() -> None:
    bomb = gzip.compress(b"\0" * (8 * PIECE + 5))
    inflater = Inflater("gzip")
    sizes = [len(piece) for piece in inflater.feed(bomb)]
    inflater.finish()
    assert max(sizes) <= PIECE
    assert sum(sizes) == 8 * PIECE + 5


def test_bytes_that_are_not_the_coding_named_are_refused() -> None:
    with pytest.raises(InvalidBody):
        inflate("gzip", [TEXT])
    with pytest.raises(InvalidBody):
        inflate("deflate", [b"\x78\x9c" + b"\xff" * 20])
