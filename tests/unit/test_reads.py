"""Recorded reads (`proxy.core.reads`): their keys, what is kept, and how a cassette and its
diff read them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import orjson
import pytest

from proxy.core import canonical, reads
from proxy.core.entry import Entry
from proxy.store import cassette
from proxy.tools import cassette_diff


def test_a_reads_key_names_its_path_query_partition_and_keyed_headers() -> None:
    base = reads.key_of("/v1/models", "shared", "", "", "")
    others = {
        reads.key_of("/v1/models/gpt-4o", "shared", "", "", ""),
        reads.key_of("/v1/models", "tenant-a", "", "", ""),
        reads.key_of("/v1/models", "shared", "suite", "", ""),
        reads.key_of("/v1/models", "shared", "", "limit=2", ""),
        reads.key_of("/v1/models", "shared", "", "", "0" * 64),
    }
    assert base not in others and len(others) == 5
    assert base == reads.key_of("/v1/models", "shared", "", "", "")


def test_a_read_never_shares_a_key_with_an_answer_of_the_same_path() -> None:
    """`GET /v1/chat/completions` lists stored completions: never a chat answer's slot."""
    listing = reads.key_of("/v1/chat/completions", "shared", "", "", "")
    assert listing != canonical.request_key("/v1/chat/completions", "shared", "", {})
    assert reads.is_read(reads.route_of("/v1/chat/completions"))
    assert not reads.is_read("/v1/chat/completions")


@pytest.mark.parametrize(
    ("status", "content_type", "kept"),
    [
        (200, "application/json", True),
        (200, "application/json; charset=utf-8", True),
        (200, "Application/JSON", True),
        (200, "application/jsonl", False),
        (200, "text/plain", False),
        (200, "", False),
        (404, "application/json", False),
        (201, "application/json", False),
        (429, "application/json", False),
    ],
)
def test_only_a_200_in_json_is_kept(status: int, content_type: str, kept: bool) -> None:
    assert reads.keepable(status, content_type) is kept


@pytest.mark.parametrize(
    ("body", "kept"),
    [
        (b'{"object": "list", "data": []}', True),
        (b"[1, 2]", False),
        (b'"text"', False),
        (b'{"object": "li', False),
        (b"", False),
        (b'{"a": NaN}', False),
    ],
)
def test_a_read_is_kept_only_as_one_json_object(body: bytes, kept: bool) -> None:
    assert reads.is_object(body) is kept


def read_line(body: bytes, query: str = "") -> bytes:
    entry = Entry(
        body=body,
        content_type="application/json",
        fingerprint=reads.FINGERPRINT,
        stored_at=1.0,
        model="",
        route=reads.route_of("/v1/models"),
        query=query,
        request=b"{}",
    )
    return orjson.dumps(cassette.to_record("k", entry)) + b"\n"


def test_a_cassette_line_of_a_read_loads_under_the_key_the_proxy_looks_up() -> None:
    (loaded,) = cassette.parse([read_line(b'{"data": []}', "limit=2")], "shared")
    assert loaded.key == reads.key_of("/v1/models", "shared", "", "limit=2", "")
    assert loaded.entry.body == b'{"data": []}' and loaded.indexes == ()


def test_a_read_line_claiming_a_model_is_refused() -> None:
    record = orjson.loads(read_line(b"{}"))
    record["model"] = "gpt-4o"
    with pytest.raises(cassette.CassetteError, match="model"):
        cassette.from_record(record, "shared")


def test_the_diff_compares_a_read_by_the_whole_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A models list is a `data` list, as embeddings are: compared as one, a new model was
    no change."""
    old = read_line(b'{"object": "list", "data": [{"id": "gpt-4o"}]}', "limit=2")
    new = read_line(b'{"data": [{"id": "gpt-4o"}, {"id": "gpt-5"}], "object": "list"}', "limit=2")
    reordered = read_line(b'{"data": [{"id": "gpt-4o"}], "object": "list"}', "limit=2")
    paths = [tmp_path / name for name in ("old.jsonl", "new.jsonl", "same.jsonl")]
    for path, text in zip(paths, (old, new, reordered), strict=True):
        path.write_bytes(text)

    def diff(against: Path) -> int:
        args = argparse.Namespace(old=str(paths[0]), new=str(against), json=True)
        return cassette_diff.main(args)

    assert diff(paths[1]) == 1
    (row,) = json.loads(capsys.readouterr().out)["requests"]
    assert row["status"] == "changed" and row["prompt"] == "limit=2"
    assert row["route"] == "GET /v1/models"
    assert diff(paths[2]) == 0  # the same object, its keys in another order
