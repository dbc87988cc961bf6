"""A cassette line naming a key twice, at any depth, is refused: orjson keeps the last copy
while a reviewer reading the line sees the first, so the line could pass review with one request
or answer and replay another."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from proxy.store import cassette
from tests.unit.test_cassette_files import line

PROMPT = "a secret prompt"


def duplicated(text: bytes, name: bytes, twin: bytes) -> bytes:
    """The line with `twin` (`"name":value`) spliced in just before the first `"name":`."""
    at = text.index(b'"' + name + b'":')
    return text[:at] + twin + b"," + text[at:]


@pytest.mark.parametrize(
    ("name", "twin"),
    [
        (b"body", b'"body":"{}"'),  # top level: the answer served
        (b"route", b'"route":"/v1/embeddings"'),
        (b"messages", b'"messages":[]'),  # inside the request: the key computed
        (b"content", b'"content":"what the reviewer reads"'),  # three levels down
    ],
)
def test_a_line_naming_a_key_twice_is_refused_with_its_number(
    tmp_path: Path, name: bytes, twin: bytes
) -> None:
    forged = duplicated(line(PROMPT, "1"), name, twin)
    orjson.loads(forged)  # one orjson reads without complaint
    path = tmp_path / "llm.jsonl"
    path.write_bytes(line("first", "1") + forged)
    said = f"cassette line 2: names the key '{name.decode()}' more than once"
    for reader in (lambda: cassette.read(str(path), "shared"), lambda: cassette.records(str(path))):
        with pytest.raises(cassette.CassetteError, match=said) as refused:
            reader()
        assert PROMPT not in str(refused.value)


def test_a_request_written_as_text_naming_a_key_twice_is_refused(tmp_path: Path) -> None:
    record = orjson.loads(line(PROMPT, "1"))
    asked = orjson.dumps(record["request"]).decode()
    record["request"] = asked.replace('"model":', '"model":"gpt-4o","model":', 1)
    path = tmp_path / "llm.jsonl"
    path.write_bytes(orjson.dumps(record) + b"\n")
    with pytest.raises(cassette.CassetteError, match="cassette line 1: 'request' names the key"):
        cassette.read(str(path), "shared")


def test_the_same_line_without_the_twin_loads(tmp_path: Path) -> None:
    record = orjson.loads(line(PROMPT, "1"))
    record["request"] = orjson.dumps(record["request"]).decode()  # text form, read as JSON
    path = tmp_path / "llm.jsonl"
    path.write_bytes(line("first", "1") + orjson.dumps(record) + b"\n")
    assert len(cassette.read(str(path), "shared")) == 2


def answer_line(body: bytes, stream: bool) -> bytes:
    """A line whose answer is `body`, a stream's events when `stream`."""
    record = orjson.loads(line(PROMPT, "1"))
    record["body"] = body.decode()
    if stream:
        record["request"]["stream"] = True
        record.update(stream=True, content_type="text/event-stream")
    return orjson.dumps(record) + b"\n"


CHUNK = b'{"choices":[{"index":0,"delta":{"content":"served"},"finish_reason":"stop"}]}'
TWICE = CHUNK.replace(b'"content":', b'"content":"reviewed","content":')


@pytest.mark.parametrize(
    ("body", "stream"),
    [
        (TWICE, False),  # a reviewer reads "reviewed" (first), the client "served" (last)
        (b"data: " + CHUNK + b"\n\ndata: " + TWICE + b"\n\ndata: [DONE]\n\n", True),
        (b"data: " + TWICE + b"\r\rdata: [DONE]\r\r", True),
    ],
)
def test_an_answer_naming_a_key_twice_is_refused(tmp_path: Path, body: bytes, stream: bool) -> None:
    path = tmp_path / "llm.jsonl"
    path.write_bytes(line("first", "1") + answer_line(body, stream))
    said = "cassette line 2: 'body' names the key 'content' more than once"
    with pytest.raises(cassette.CassetteError, match=said):
        cassette.read(str(path), "shared")
    with pytest.raises(cassette.CassetteError, match=said):
        cassette.records(str(path))


@pytest.mark.parametrize(
    ("body", "stream"),
    [
        (CHUNK, False),
        (b"Not JSON at all.", False),
        (b"data: " + CHUNK + b"\n\ndata: {oops\n\ndata: [DONE]\n\n", True),
    ],
)
def test_an_answer_naming_each_key_once_or_no_json_loads(
    tmp_path: Path, body: bytes, stream: bool
) -> None:
    path = tmp_path / "llm.jsonl"
    path.write_bytes(answer_line(body, stream))
    assert len(cassette.read(str(path), "shared")) == 1
