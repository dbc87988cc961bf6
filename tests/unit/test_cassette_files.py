"""Cassette files: sorted, merged, checked line by line; the closest recorded request to a miss;
`repro-proxy cassette diff`."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Settings
from proxy.core import answers, responses
from proxy.core.call import Asked, prepare_with
from proxy.core.entry import Entry
from proxy.core.nearest import Request, closest, explain, readable
from proxy.store import cassette, cassette_write
from proxy.testing import session
from proxy.tools import cassette_diff


def chat_answer(content: str, fingerprint: str = "fp_a", created: int = 1) -> bytes:
    return orjson.dumps(
        {
            "id": f"chatcmpl-{created}",
            "created": created,
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        }
    )


def line(prompt: str, content: str, *, stored_at: float = 1.0, fingerprint: str = "fp_a") -> bytes:
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    entry = Entry(
        body=chat_answer(content, fingerprint, int(stored_at)),
        content_type="application/json",
        fingerprint=fingerprint,
        stored_at=stored_at,
        model="gpt-4o-mini",
        route="/v1/chat/completions",
        request=orjson.dumps(request).decode(),
    )
    return orjson.dumps(cassette.to_record("k", entry)) + b"\n"


def test_a_line_names_model_fingerprint_and_when_it_was_recorded() -> None:
    record = orjson.loads(line("Hi.", "Hello.", stored_at=1_700_000_000.5))
    assert record["model"] == "gpt-4o-mini"
    assert record["fingerprint"] == "fp_a"
    assert record["recorded_at"] == "2023-11-14T22:13:20+00:00"


def test_saving_sorts_by_request_so_rerecording_changes_only_changed_answers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "llm.jsonl"
    cassette_write.save(str(path), [line("b", "2", stored_at=1), line("a", "1", stored_at=2)])
    first = path.read_bytes().splitlines()
    cassette_write.save(str(path), [line("a", "1", stored_at=2), line("b", "3", stored_at=1)])
    second = path.read_bytes().splitlines()
    assert first[0] == second[0]  # request "a": same answer, same line
    assert first[1] != second[1]
    assert [orjson.loads(x)["request"]["messages"][0]["content"] for x in second] == ["a", "b"]
    assert not list(tmp_path.glob("*.tmp-*"))


def test_merging_workers_keeps_one_answer_per_request_the_earliest() -> None:
    merged = cassette_write.merged(
        [[line("a", "late", stored_at=5), line("b", "only")], [line("a", "early", stored_at=3)]]
    )
    assert [orjson.loads(x)["stored_at"] for x in merged] == [3, 1]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (b"{oops\n", "cassette line 2: "),
        (b"[]\n", "cassette line 2: not a JSON object"),
        (b'{"format": 1, "authorization": "Bearer sk-live"}\n', "never holds headers"),
        (b'{"format": 1, "extra": 1}\n', "unknown field 'extra'"),
        (b'{"format": 9}\n', "unknown cassette format 9"),
    ],
)
def test_a_foreign_line_is_named_and_refused(tmp_path: Path, text: bytes, said: str) -> None:
    path = tmp_path / "llm.jsonl"
    path.write_bytes(line("a", "1") + text)
    with pytest.raises(cassette.CassetteError, match=said) as refused:
        cassette.read(str(path), "shared")
    assert "sk-live" not in str(refused.value)
    with pytest.raises(cassette.CassetteError, match=said):
        cassette.records(str(path))


def test_a_line_too_long_is_refused_before_it_is_read_whole() -> None:
    handle = io.BytesIO(b"{}\n" + b"x" * 101 + b"\n")
    with pytest.raises(cassette.CassetteError, match="line 2: longer than 100 bytes"):
        list(cassette.bounded(handle, limit=100))


def request(
    content: str, model: str = "gpt-4o-mini", route: str = "/v1/chat/completions"
) -> Request:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "seed": 1}
    return Request(route, model, "", "", readable(body))


def test_the_closest_recorded_request_prefers_its_route_and_model() -> None:
    recorded = [
        request("Name a colour."),
        request("Name a colour.", model="gpt-4o"),
        request("Translate this whole paragraph."),
    ]
    near, alike = closest(request("Name a color."), recorded) or (None, 0)
    assert near == recorded[0]
    assert 0.9 < alike < 1
    assert closest(request("x"), []) is None


def test_a_miss_explained_shows_what_changed() -> None:
    said = explain(request("Name a color."), [request("Name a colour."), request("Other.")])
    assert '-      "content": "Name a colour.",' in said
    assert '+      "content": "Name a color.",' in said
    other_model = explain(request("Hi.", model="gpt-4o"), [request("Hi.")])
    assert "the same body is recorded" not in other_model
    assert "recorded under model 'gpt-4o-mini'" in other_model
    assert explain(request("Hi."), []).endswith("nothing is recorded.")
    long_talk = "word " * 10_000
    tail = explain(request(long_talk + "end."), [request(long_talk + "stop.")])
    assert "over 99% alike" in tail and "+" + '      "content": "word' in tail
    huge = explain(request("word " * 100_000), [request("Hi.")])
    assert max(len(line) for line in huge.splitlines()) <= 241


def test_answers_compare_by_what_they_say_not_how_they_were_sent() -> None:
    assert answers.text(chat_answer("Blue.", created=1), False) == answers.text(
        chat_answer("Blue.", "fp_b", created=2), False
    )
    frames = b"".join(
        b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": part}}]}) + b"\n\n"
        for part in ("Bl", "ue.")
    )
    assert answers.text(frames + b"data: [DONE]\n\n", True) == "Blue."
    vectors = orjson.dumps({"data": [{"embedding": [0.5, 1.0]}], "usage": {}})
    assert answers.text(vectors, False) == "[[0.5,1.0]]"


def diff(tmp_path: Path, old: list[bytes], new: list[bytes], *flags: str) -> int:
    (tmp_path / "old.jsonl").write_bytes(b"".join(old))
    (tmp_path / "new.jsonl").write_bytes(b"".join(new))
    args = argparse.Namespace(
        old=str(tmp_path / "old.jsonl"), new=str(tmp_path / "new.jsonl"), json="--json" in flags
    )
    return cassette_diff.main(args)


def test_diff_reports_identical_changed_and_one_sided(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = [line("a", "Blue."), line("b", "Red."), line("c", "Gone.")]
    new = [
        line("a", "Blue.", stored_at=9),
        line("b", "Green.", fingerprint="fp_b"),
        line("d", "New."),
    ]
    assert diff(tmp_path, old, new, "--json") == 1
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert report["summary"] == {"changed": 1, "only_old": 1, "only_new": 1, "identical": 1}
    changed = report["requests"][0]
    assert changed["prompt"] == "b" and changed["status"] == "changed"
    assert 0 < changed["distance"] <= 1
    assert (changed["old"]["fingerprint"], changed["new"]["fingerprint"]) == ("fp_a", "fp_b")
    assert diff(tmp_path, old, old) == 0
    assert "3 identical" in capsys.readouterr().out


def test_the_diff_table_in_a_ci_log_shows_each_status_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Piped into a CI log (80 columns, no terminal) long prompts squeeze the table, never the
    status a reader scans for."""
    long = "Name every river of Europe in the order of its length, longest first. " * 3
    old = [line(long + "a", "Blue."), line(long + "b", "Red."), line(long + "c", "Gone.")]
    new = [line(long + "a", "Blue."), line(long + "b", "Green."), line(long + "d", "New.")]
    assert diff(tmp_path, old, new) == 1
    table = capsys.readouterr().out.rsplit("\n", 2)[0]  # the summary line left out
    assert max(map(len, table.splitlines())) <= 80
    for status in ("identical", "changed", "only_old", "only_new"):
        assert f"│ {status} " in table, table


def test_diff_of_an_unreadable_cassette_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert diff(tmp_path, [line("a", "1")], [b"{broken\n"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("repro-proxy cassette diff: cassette line 1:")
    assert err.count("\n") == 1


def test_a_prompt_with_markup_is_shown_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    diff(tmp_path, [line("[b]x[/b]", "1")], [line("[b]x[/b]", "2")])
    assert "[b]x[/b]" in capsys.readouterr().out


def test_a_miss_is_shown_without_format_characters_nor_a_key_from_its_url() -> None:
    """A failure's text reaches a terminal and CI logs: no bidi override nor escape sequence
    from a prompt acts there, and a key sent in the URL's query is not printed."""
    raw = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi.\u202eevil"}]}
    )
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer sk-a"}))
    asked = Asked.of("/v1/chat/completions", "subscription-key=Sub-Secret-1&x=1", raw, headers)
    call = prepare_with(Settings(upstream="http://127.0.0.1:9/v1"), "tenant", asked)
    shown = session._request(call)
    said = explain(shown, [request("Hi.")])
    assert "\u202e" not in said and "\\u202e" in said
    assert shown.query == "x=1" and "Sub-Secret-1" not in said
    assert "\n" in readable({"a": 1}) and readable("plain\x1b[2Ktext\n") == "plain\\x1b[2Ktext\n"


@pytest.mark.parametrize(
    ("route", "asked", "answer", "domain"),
    [
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [], "store": True},
            {"id": "chatcmpl-1", "object": "chat.completion", "choices": []},
            "chat",
        ),
        ("/v1/responses", {"model": "m", "input": "x"}, {"id": "chatcmpl-1"}, "response"),
    ],
)
def test_a_loaded_answer_the_upstream_keeps_is_indexed_as_a_stored_one(
    route: str, asked: dict[str, Any], answer: dict[str, Any], domain: str
) -> None:
    """What `recording.index_response` writes beside an answer it stores, a cassette's line
    brings too: its id in the target's partition, and the pointer any key's deletion follows.
    A chat completion made without `store: true` is kept by no upstream: nothing to index."""
    entry = Entry(
        body=orjson.dumps(answer),
        content_type="application/json",
        fingerprint="fp_a",
        stored_at=1.0,
        model="m",
        route=route,
        request=orjson.dumps(asked),
    )
    (loaded,) = cassette.parse([orjson.dumps(cassette.to_record("k", entry))], "shared")
    assert loaded.indexes == (
        responses.index_key("shared", "", "chatcmpl-1", index=domain),
        responses.everywhere_key("chatcmpl-1", index=domain),
    )
    if domain == "chat":
        unkept = entry._replace(request=orjson.dumps({**asked, "store": False}))
        (loaded,) = cassette.parse([orjson.dumps(cassette.to_record("k", unkept))], "shared")
        assert loaded.indexes == ()
