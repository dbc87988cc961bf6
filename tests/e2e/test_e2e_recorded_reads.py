"""Recorded reads: a `GET` of a pass-through route (the models list, a model) that a recording
keeps in its cassette, and replay mode answers offline; what a hostile upstream sends instead of
one JSON object is relayed and never kept."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI

from bench.procs import peak_rss_kib
from tests.fixtures_procs import Proxy, ProxyFactory, Sim
from tests.hostile import Scripted, fixed, http_answer

KEY = "sk-reads-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
RECORDING = ("--cache-scope", "shared")


def stop(proxy: Proxy) -> None:
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(timeout=15) == 0


def lines(tape: Path) -> list[dict[str, Any]]:
    """The cassette a recorder wrote as it stopped (written even when it holds nothing)."""
    return [orjson.loads(line) for line in tape.read_bytes().splitlines()]


def replaying(start_proxy: ProxyFactory, tape: Path, upstream: Scripted) -> Proxy:
    return start_proxy(
        *RECORDING, "--cassette", str(tape), "--cache-mode", "replay", upstream=upstream.v1
    )


def nothing_upstream() -> Scripted:
    """An upstream that counts connections: replay must open none."""
    return Scripted(fixed(http_answer(b'{"object":"list","data":[]}')))


def test_the_sdk_lists_models_offline_as_recorded(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy(*RECORDING, "--cassette", str(tape))
    with OpenAI(base_url=recorder.v1, api_key=KEY) as client:
        listed = client.models.with_raw_response.list()
        one = client.models.retrieve("gpt-4o")
    assert listed.headers["X-Repro-Cache"] == "REFRESH"
    kept_under = listed.headers["X-Repro-Key"]  # in the caller's partition
    names = [model.id for model in listed.parse()]
    assert "gpt-4o-mini" in names and one.id == "gpt-4o"
    stop(recorder)
    kept = {line["route"]: line for line in lines(tape)}
    assert set(kept) == {"GET /v1/models", "GET /v1/models/gpt-4o"}
    assert kept["GET /v1/models"]["model"] == "" and kept["GET /v1/models"]["fingerprint"] == "none"
    assert KEY not in tape.read_text()
    with nothing_upstream() as upstream:
        replayer = replaying(start_proxy, tape, upstream)
        with OpenAI(base_url=replayer.v1, api_key="sk-another-key", max_retries=0) as client:
            again = client.models.with_raw_response.list()
            assert [model.id for model in again.parse()] == names
            assert client.models.retrieve("gpt-4o") == one
            with pytest.raises(Exception) as missed:
                client.models.retrieve("gpt-4")
        assert again.headers["X-Repro-Cache"] == "HIT"
        assert kept["GET /v1/models"]["key"] == kept_under
        assert again.headers["x-request-id"] == kept["GET /v1/models"]["request_id"]
        assert getattr(missed.value, "status_code", None) == 504
        stop(replayer)
        assert upstream.connections == 0


def test_a_read_is_answered_only_for_its_own_path_query_and_namespace(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy(*RECORDING, "--cassette", str(tape))
    asked = httpx.get(recorder.v1 + "/models?limit=2", headers=AUTH | {"X-Repro-Namespace": "a"})
    assert asked.status_code == 200
    stop(recorder)
    with nothing_upstream() as upstream:
        replayer = replaying(start_proxy, tape, upstream)
        for path, namespace, status in [
            ("/models?limit=2", "a", 200),
            ("/models?limit=2", "b", 504),
            ("/models?limit=3", "a", 504),
            ("/models", "a", 504),
            ("/models/", "a", 504),
        ]:
            got = httpx.get(replayer.v1 + path, headers=AUTH | {"X-Repro-Namespace": namespace})
            assert got.status_code == status, (path, namespace)
        missed = httpx.get(replayer.v1 + "/models", headers=AUTH)
        assert missed.json()["error"]["code"] == "cache_miss"
        assert missed.headers["x-should-retry"] == "false"
        assert missed.headers["X-Repro-Cache"] == "MISS"
        stop(replayer)
        assert upstream.connections == 0


def test_without_a_cassette_a_read_passes_through_and_nothing_is_kept(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy("--admin-token", "adm-reads")
    for _ in range(2):
        got = httpx.get(proxy.v1 + "/models", headers=AUTH)
        assert got.status_code == 200 and got.headers["X-Repro-Cache"] == "BYPASS"
    assert len([r for r in sim.requests() if r["path"] == "/v1/models"]) == 2
    stats = httpx.get(proxy.url + "/admin/stats", headers={"Authorization": "Bearer adm-reads"})
    assert stats.json()["entries"] == 0


def test_a_credential_in_the_query_is_neither_kept_nor_keyed(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy(*RECORDING, "--cassette", str(tape))
    got = httpx.get(recorder.v1 + "/models?api-key=sk-in-the-query-42&limit=1", headers=AUTH)
    assert got.status_code == 200
    stop(recorder)
    (line,) = lines(tape)
    assert line["query"] == "limit=1" and "sk-in-the-query-42" not in tape.read_text()


def json_answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    return http_answer(body, "Content-Type: application/json", *headers, status=status)


LISTED = b'{"object":"list"}'
HOSTILE = [
    ("not JSON", http_answer(b"<html>hi</html>", "Content-Type: text/html")),
    ("a JSON array", json_answer(b"[1, 2]")),
    ("not JSON at all", json_answer(b'{"object": "li')),
    ("an error", json_answer(b'{"error": {}}', status="404 Not Found")),
    ("no-store", json_answer(LISTED, "Cache-Control: no-store")),
    ("private", json_answer(LISTED, "Cache-Control: private")),
    ("a Vary the key leaves out", json_answer(LISTED, "Vary: User-Agent")),
    ("two Content-Types", json_answer(LISTED, "Content-Type: application/json")),
    ("the caller's key", json_answer(orjson.dumps({"echo": KEY}))),
    (
        "the caller's key as its type",
        http_answer(LISTED, f"Content-Type: application/json; echo={KEY}"),
    ),
    ("over --max-entry", json_answer(orjson.dumps({"pad": "x" * 5000}))),
]


@pytest.mark.parametrize(("what", "answer"), HOSTILE, ids=[what for what, _ in HOSTILE])
def test_a_hostile_upstreams_read_is_relayed_and_never_kept(
    start_proxy: ProxyFactory, tmp_path: Path, what: str, answer: bytes
) -> None:
    tape = tmp_path / "llm.jsonl"
    with Scripted(fixed(answer)) as upstream:
        recorder = start_proxy(
            *RECORDING, "--cassette", str(tape), "--max-entry", "4096", upstream=upstream.v1
        )
        got = httpx.get(recorder.v1 + "/models", headers=AUTH)
        assert got.content == answer.partition(b"\r\n\r\n")[2]
        assert got.headers["X-Repro-Cache"] in ("REFRESH", "BYPASS")
        stop(recorder)
    assert lines(tape) == []


def test_a_read_cut_short_reaches_the_client_broken_and_is_never_kept(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    cut = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{}"
    with Scripted(fixed(cut)) as upstream:
        recorder = start_proxy(*RECORDING, "--cassette", str(tape), upstream=upstream.v1)
        with pytest.raises(httpx.HTTPError):
            httpx.get(recorder.v1 + "/models", headers=AUTH, timeout=30)
        stop(recorder)
    assert lines(tape) == []


def test_a_gzipped_read_is_kept_inflated(start_proxy: ProxyFactory, tmp_path: Path) -> None:
    import gzip

    body = b'{"object":"list","data":[{"id":"m1"}]}'
    answer = http_answer(
        gzip.compress(body), "Content-Type: application/json", "Content-Encoding: gzip"
    )
    tape = tmp_path / "llm.jsonl"
    with Scripted(fixed(answer)) as upstream:
        recorder = start_proxy(*RECORDING, "--cassette", str(tape), upstream=upstream.v1)
        got = httpx.get(recorder.v1 + "/models", headers=AUTH)
        assert got.json() == orjson.loads(body)
        stop(recorder)
    (line,) = lines(tape)
    assert line["body"] == body.decode()


def test_record_mode_keeps_a_read_that_an_export_carries_to_a_replaying_proxy(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """Recorded into a store (`--cache-mode record`, no cassette), exported, imported into
    a replaying proxy of another scope: the read is answered there, for the importing key."""
    admin = {"Authorization": "Bearer adm-reads"}
    recorder = start_proxy("--cache-mode", "record", "--admin-token", "adm-reads")
    asked = httpx.get(recorder.v1 + "/models", headers=AUTH)
    assert asked.headers["X-Repro-Cache"] == "REFRESH"
    exported = httpx.get(recorder.url + "/admin/export", headers=admin)
    assert [orjson.loads(line)["route"] for line in exported.content.splitlines()] == [
        "GET /v1/models"
    ]
    with nothing_upstream() as upstream:
        replayer = start_proxy(
            "--cache-mode", "replay", "--admin-token", "adm-reads", upstream=upstream.v1
        )
        imported = httpx.post(
            replayer.url + "/admin/import",
            content=exported.content,
            headers=admin | {"X-Repro-Api-Key": KEY, "Content-Type": "application/x-ndjson"},
        )
        assert imported.json() == {"imported": 1}
        mine = httpx.get(replayer.v1 + "/models", headers=AUTH)
        assert mine.headers["X-Repro-Cache"] == "HIT" and mine.content == asked.content
        theirs = httpx.get(replayer.v1 + "/models", headers={"Authorization": "Bearer sk-other"})
        assert theirs.status_code == 504  # --cache-scope key: the importing key's partition
        stop(replayer)
        assert upstream.connections == 0


def test_a_gzip_bomb_read_reaches_the_client_in_pieces_and_is_never_kept(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """256 KiB of gzip that inflates to 256 MiB of JSON: the recording inflates it as it
    relays it, in bounded pieces, stops keeping it at --max-entry, and never holds it whole."""
    import gzip

    inflated = 256 * 1024 * 1024
    bomb = gzip.compress(b'{"pad":"' + b" " * (inflated - 10) + b'"}', compresslevel=9)
    answer = http_answer(bomb, "Content-Type: application/json", "Content-Encoding: gzip")
    tape = tmp_path / "llm.jsonl"
    with Scripted(fixed(answer)) as upstream:
        recorder = start_proxy(
            *RECORDING, "--cassette", str(tape), "--max-entry", "1048576", upstream=upstream.v1
        )
        before = peak_rss_kib(recorder.proc.pid)
        received = 0
        with httpx.stream("GET", recorder.v1 + "/models", headers=AUTH, timeout=120) as got:
            assert got.headers["X-Repro-Cache"] == "REFRESH"
            for chunk in got.iter_raw():
                received += len(chunk)
        rise_mib = (peak_rss_kib(recorder.proc.pid) - before) / 1024
        stop(recorder)
    assert received == inflated
    assert rise_mib < 40, f"peak RSS rose {rise_mib:.0f} MiB"
    assert lines(tape) == []
