"""Cassette files as an attacker leaves them: links planted where the cassette is written, lines
whose fields have the wrong types, answers long enough to make a diff run for hours."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from proxy.core import answers
from proxy.core.entry import Entry
from proxy.core.textdistance import MAX_COMPARED, bounded_distance
from proxy.store import cassette, cassette_write
from proxy.tools import cassette_diff


def line(content: str, *, prompt: str = "Hi.", model: str = "gpt-4o-mini") -> bytes:
    request = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    answer = {"id": "c", "choices": [{"index": 0, "message": {"content": content}}]}
    entry = Entry(
        body=orjson.dumps(answer),
        content_type="application/json",
        fingerprint="fp_a",
        stored_at=1.0,
        model=model,
        route="/v1/chat/completions",
        request=orjson.dumps(request).decode(),
    )
    return orjson.dumps(cassette.to_record("k", entry)) + b"\n"


def test_a_link_planted_at_a_temporary_name_is_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "llm.jsonl"
    planted = tmp_path / f"llm.jsonl.tmp-{os.getpid()}"  # a name a writer could predict
    planted.symlink_to(victim)
    cassette_write.save(str(path), [line("Hello.")])
    assert victim.read_bytes() == b"precious"
    assert path.is_file() and not path.is_symlink()
    assert cassette.records(str(path))[0]["body"].endswith('"content":"Hello."}}]}')
    assert sorted(os.listdir(tmp_path)) == ["llm.jsonl", planted.name, "victim"]


def test_a_link_at_the_cassette_itself_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "llm.jsonl"
    path.symlink_to(victim)
    cassette_write.save(str(path), [line("Hello.")])
    assert victim.read_bytes() == b"precious"
    assert not path.is_symlink() and len(cassette.records(str(path))) == 1


def test_a_rewritten_cassette_keeps_its_permissions(tmp_path: Path) -> None:
    path = tmp_path / "llm.jsonl"
    path.write_bytes(line("Old."))
    path.chmod(0o640)
    cassette_write.save(str(path), [line("New.")])
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_private_cassettes_next_version_is_never_readable_by_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new file is in the folder from its creation: another local user who opens it then
    (inotify names it at once) keeps reading through that descriptor whatever mode it gets
    after, so it must be born with the cassette's permissions, not the umask's."""
    path = tmp_path / "llm.jsonl"
    path.write_bytes(line("Old."))
    path.chmod(0o600)
    seen: list[int] = []
    chmod = os.fchmod

    def first_look(descriptor: int, mode: int) -> None:  # the writer's next step after creating
        seen.append(stat.S_IMODE(os.fstat(descriptor).st_mode))
        chmod(descriptor, mode)

    monkeypatch.setattr(os, "fchmod", first_look)
    previous = os.umask(0o022)
    try:
        cassette_write.save(str(path), [line("New.")])
    finally:
        os.umask(previous)
    assert seen and all(mode & 0o077 == 0 for mode in seen), [oct(mode) for mode in seen]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "llm.jsonl"
    path.mkdir()  # written in full, then it cannot be moved into place
    with pytest.raises(IsADirectoryError):
        cassette_write.save(str(path), [line("New.")])
    assert os.listdir(tmp_path) == ["llm.jsonl"]


def wrong(field: str, value: object) -> bytes:
    record = orjson.loads(line("Hello."))
    if field == "body_base64":
        del record["body"]
    record[field] = value
    return orjson.dumps(record) + b"\n"


@pytest.mark.parametrize(
    ("field", "value"),
    [("request", 5), ("request", [1]), ("body", 5), ("body_base64", 5), ("recorded_at", [1])],
)
def test_a_field_of_the_wrong_type_is_named_with_its_line(
    tmp_path: Path, field: str, value: object
) -> None:
    """tests/e2e/test_cassette_diff_cli.py checks the command's one line for the same files."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(line("Hello.", prompt="Other.") + wrong(field, value))
    with pytest.raises(cassette.CassetteError, match=f"line 2: {field!r} has the wrong type"):
        cassette.read(str(bad), "shared")


@pytest.mark.parametrize(
    "field", ["prompt_tokens", "completion_tokens", "seed", "stored_at", "format"]
)
def test_a_boolean_where_a_number_belongs_is_the_wrong_type(field: str) -> None:
    """JSON's true is no number, though Python's bool is an int: `"format": true` read as
    format 1 and `"prompt_tokens": true` was kept, and exported back, as a count."""
    with pytest.raises(cassette.CassetteError, match=r"line 1: .*(wrong type|format)"):
        cassette.parse([wrong(field, True)], "shared")


def test_the_bounded_distance_is_exact_when_few_edits_and_an_upper_bound_beyond() -> None:
    long = MAX_COMPARED * 4
    assert bounded_distance("a" * long, "a" * long) == 0
    assert bounded_distance("a" * long, "a" * (long - 3)) == 3 / long
    unrelated = bounded_distance("ab" * long, "cd" * long)
    assert unrelated == 1.0
    assert bounded_distance("kitten", "sitting") == 3 / 7


def test_a_diff_shows_escape_sequences_a_cassette_carries_as_text(tmp_path: Path) -> None:
    """Such a sequence could erase the row of a changed answer from a reviewer's terminal; the
    command's own output is checked in tests/e2e/test_cassette_diff_cli.py."""
    old, new = escaped_pair(tmp_path)
    wide = io.StringIO()
    rows = cassette_diff.compare(cassette.records(str(old)), cassette.records(str(new)))
    cassette_diff.render(rows, Console(file=wide, width=400, force_terminal=True))
    assert "gpt-4o-mini\\x1b[1A\\x1b[2K\\x1b]0;title\\x07" in wide.getvalue()
    assert "Hi.\\x1b[1A\\x1b[2K\\u202eevil" in wide.getvalue()


def escaped_pair(folder: Path) -> tuple[Path, Path]:
    """Two cassettes whose one request differs in its answer and whose model and prompt carry
    terminal escape sequences (cursor up, erase line, a window title, a right-to-left mark)."""
    erase = "\x1b[1A\x1b[2K"  # cursor up one line, erase it
    model = f"gpt-4o-mini{erase}\x1b]0;title\x07"
    prompt = f"Hi.{erase}\u202eevil"
    old, new = folder / "old.jsonl", folder / "new.jsonl"
    old.write_bytes(line("1", prompt=prompt, model=model))
    new.write_bytes(line("2", prompt=prompt, model=model))
    return old, new


@pytest.mark.parametrize(
    "text",
    [b'{"format": "%s"}\n', b'{"format": 1, "%s": 1}\n', b'{"format": 1, "token%s": 1}\n'],
    ids=["format", "field", "secret-field"],
)
def test_an_error_quotes_a_line_briefly(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "llm.jsonl"
    path.write_bytes(text.replace(b"%s", b"x" * 1_000_000))
    with pytest.raises(cassette.CassetteError) as refused:
        cassette.records(str(path))
    assert "'xxxx" in str(refused.value) or "'tokenxxx" in str(refused.value)
    assert len(str(refused.value)) < 300


def test_a_cassette_with_the_longest_name_a_folder_allows_is_written(tmp_path: Path) -> None:
    path = tmp_path / ("c" * 249 + ".jsonl")
    assert cassette_write.save(str(path), [line("Hello.")]) == 1
    assert os.listdir(tmp_path) == [path.name]


def test_a_credential_in_a_lines_query_is_neither_keyed_nor_kept() -> None:
    """A cassette written before a parameter was read as a credential (or by hand) may hold
    one in its query: loaded, the line keys as the live request does, without it, and no
    store or later export holds it."""
    record = orjson.loads(line("Hello."))
    plain, keyed = dict(record, query="api-version=1"), dict(record)
    keyed["query"] = "api-version=1&apikey=sk-leaked&access_token=tok-leaked"
    (clean,), (loaded,) = (cassette.parse([orjson.dumps(r)], "shared") for r in (plain, keyed))
    assert loaded.key == clean.key
    assert loaded.entry.query == "api-version=1"
    assert b"leaked" not in orjson.dumps(cassette.to_record(loaded.key, loaded.entry))


def test_a_cassette_too_large_in_all_is_refused_before_it_is_read_whole(tmp_path: Path) -> None:
    """Each line may be up to MAX_LINE, but every reader holds the whole file: a cassette of
    many long lines is refused with one line, not read until memory runs out."""
    with pytest.raises(cassette.CassetteError, match=r"line 1: .*larger than 50 bytes in all"):
        list(cassette.bounded(io.BytesIO(b"x" * 99 + b"\n"), limit=100, total=50))
    handle = io.BytesIO((b"y" * 99 + b"\n") * 3)
    with pytest.raises(cassette.CassetteError, match=r"line 3: .*larger than 250 bytes in all"):
        list(cassette.bounded(handle, limit=100, total=250))
    big = tmp_path / "llm.jsonl"
    with big.open("wb") as out:  # sparse: larger than MAX_CASSETTE, no disk used
        out.truncate(cassette.MAX_CASSETTE + 1)
    for reader in (lambda: cassette.read(str(big), "shared"), lambda: cassette.records(str(big))):
        with pytest.raises(cassette.CassetteError, match="in all"):
            reader()


DEEP_LIST = b"[" * 1000 + b"]" * 1000


@pytest.mark.parametrize(
    ("body", "stream"),
    [
        (b'{"choices":[{"message":{"tool_calls":[{"function":{"arguments":' + DEEP_LIST
         + b"}}]}}]}", False),
        (b'{"data":[{"embedding":' + DEEP_LIST + b"}]}", False),
        (b'{"output":[{"type":"x","deep":' + DEEP_LIST + b"}]}", False),
        (b'{"kept":' + DEEP_LIST + b"}", False),
        (b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":'
         + DEEP_LIST + b"}}]}}]}\n\n", True),
    ],
)  # fmt: skip
def test_an_answer_nested_too_deeply_to_flatten_is_compared_as_its_bytes(
    body: bytes, stream: bool
) -> None:
    """orjson reads 1024 levels but writes 254, and Python recurses about 1000 deep: an
    upstream's or a cassette's answer must never make the text of an answer an error."""
    assert answers.text(body, stream) == body.decode()


def test_a_request_nested_past_the_proxys_bound_is_refused_naming_its_line(
    tmp_path: Path,
) -> None:
    """Every reader recomputes a line's key from its request: one nested a thousand levels deep
    made them recurse until Python gave up (a traceback in diff, the plugin and serve; the
    command is checked in tests/e2e/test_cassette_diff_cli.py)."""
    for path in deep_requests(tmp_path):
        with pytest.raises(cassette.CassetteError, match="cassette line 1: "):
            cassette.read(str(path), "shared")


def deep_requests(folder: Path) -> list[Path]:
    """Cassettes of one line each, whose request is nested 129, 300 and 1000 levels deep."""
    good = orjson.loads(line("fine"))
    paths = []
    for depth in (129, 300, 1000):
        record = dict(good, request={"model": "gpt-4o-mini", "messages": [], "metadata": "D"})
        text = orjson.dumps(record).replace(b'"D"', b'{"a":' * depth + b"{}" + b"}" * depth)
        path = folder / f"deep{depth}.jsonl"
        path.write_bytes(text + b"\n")
        paths.append(path)
    return paths


def test_a_new_cassette_is_its_writers_alone(tmp_path: Path) -> None:
    """It holds prompts and answers, an export every tenant's. Before: 0644 under the usual
    umask, readable by every local user."""
    previous = os.umask(0o022)
    try:
        path = tmp_path / "new.jsonl"
        cassette_write.save(str(path), [line("Hello.")])
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("length", [120, 127])  # 240 and 254 bytes, each under NAME_MAX
def test_a_name_of_many_bytes_per_character_is_written(tmp_path: Path, length: int) -> None:
    """The temporary name is cut to NAME_MAX in bytes. Before: cut in characters, a valid name
    of two-byte characters made a temporary one the system refused, and the recording was lost
    at exit (with a message naming the port)."""
    path = tmp_path / ("é" * length + "x")
    assert len(os.fsencode(path.name)) <= 255
    cassette_write.save(str(path), [line("Hello.")])
    assert len(cassette.records(str(path))) == 1
    assert os.listdir(tmp_path) == [path.name]
