"""Recorded reads under attack: what a client sends beside a read, or an upstream echoes in its
head, must neither change an answer kept under a key that does not name it, nor carry a
credential into the store, nor serve one tenant's objects to another; and the client's own
word on caching holds for reads as for the cached routes."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import orjson

from tests.fixtures_procs import Proxy, ProxyFactory, Sim
from tests.hostile import Scripted, completion, fixed, http_answer

KEY = "sk-reads-attack-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
OTHER = {"Authorization": "Bearer sk-reads-other-0123456789"}
RECORDING = ("--cache-scope", "shared")
LISTED = http_answer(b'{"object":"list","data":[]}', "Content-Type: application/json")


def stop(proxy: Proxy) -> None:
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(timeout=15) == 0


def routes(tape: Path) -> list[str]:
    return [orjson.loads(line)["route"] for line in tape.read_bytes().splitlines()]


def test_a_rerouting_header_never_reaches_the_upstream_of_a_kept_read(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Before: forwarded as sent, `X-Forwarded-Host` made the upstream's `next` link point at
    evil.example and `X-HTTP-Method-Override: DELETE` made a read a deletion, each kept under
    the plain read's key and replayed to every caller."""
    tape = tmp_path / "llm.jsonl"
    rerouting = {"X-Forwarded-Host": "evil.example", "X-HTTP-Method-Override": "DELETE"}
    with Scripted(fixed(LISTED)) as upstream:
        recorder = start_proxy(*RECORDING, "--cassette", str(tape), upstream=upstream.v1)
        got = httpx.get(recorder.v1 + "/files/file-1", headers=AUTH | rerouting)
        assert got.status_code == 200 and got.headers["X-Repro-Cache"] == "REFRESH"
        stop(recorder)
    sent = upstream.received[0].headers
    assert upstream.received[0].request_line == "GET /v1/files/file-1 HTTP/1.1"
    assert "x-forwarded-host" not in sent and "x-http-method-override" not in sent
    assert sent["authorization"] == AUTH["Authorization"]
    assert routes(tape) == ["GET /v1/files/file-1"]


def test_a_read_recorded_in_a_shared_store_is_replayed_to_its_own_tenant_only(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str
) -> None:
    """Before: kept in the shared partition, tenant A's read (its files, a response's input
    items, its fine-tuned models) was replayed from the shared store to any key and to callers
    with none. Now kept in A's own partition: A replays it, nobody else does."""
    recorder = start_proxy(*RECORDING, "--store", redis_url, "--cache-mode", "record")
    kept = httpx.get(recorder.v1 + "/models/gpt-4o", headers=AUTH)
    assert kept.status_code == 200 and kept.headers["X-Repro-Cache"] == "REFRESH"
    stop(recorder)
    asked = len(sim.requests())
    replayer = start_proxy(*RECORDING, "--store", redis_url, "--cache-mode", "replay")
    own = httpx.get(replayer.v1 + "/models/gpt-4o", headers=AUTH)
    assert own.status_code == 200 and own.headers["X-Repro-Cache"] == "HIT"
    assert own.json() == kept.json()
    assert own.headers["X-Repro-Key"] == kept.headers["X-Repro-Key"]
    for who in (OTHER, {}):
        refused = httpx.get(replayer.v1 + "/models/gpt-4o", headers=who)
        assert refused.status_code == 504, who
        assert refused.json()["error"]["code"] == "cache_miss"
        assert "gpt-4o" not in refused.text.replace("/models/gpt-4o", "")
    assert len(sim.requests()) == asked


def test_a_request_id_echoing_the_key_is_never_kept(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Before: an upstream sending the caller's key back as `x-request-id` (any short token
    passes as one) had it written into the cassette and served again as a replayed read's
    header; the cached routes stored it with the answer alike."""
    tape = tmp_path / "llm.jsonl"
    echoing = http_answer(
        b'{"object":"list","data":[]}', "Content-Type: application/json", f"x-request-id: {KEY}"
    )
    with Scripted(fixed(echoing)) as upstream:
        recorder = start_proxy(*RECORDING, "--cassette", str(tape), upstream=upstream.v1)
        relayed = httpx.get(recorder.v1 + "/files", headers=AUTH)
        assert relayed.status_code == 200 and relayed.json()["object"] == "list"
        stop(recorder)
    assert routes(tape) == [] and KEY not in tape.read_text()


def test_an_answer_whose_request_id_echoes_the_key_is_never_stored(
    start_proxy: ProxyFactory,
) -> None:
    """The cached routes' side of the test above: relayed to its caller, never stored."""
    answer = http_answer(completion("Hi"), "Content-Type: application/json", f"x-request-id: {KEY}")
    with Scripted(fixed(answer)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(2):
            assert proxy.post("/chat/completions", body, key=KEY).headers["X-Repro-Cache"] == (
                "MISS"
            )
        assert len(upstream.received) == 2


def test_a_read_sent_with_no_store_is_neither_kept_nor_replayed(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """`Cache-Control: no-store` means neither look up nor store, on a read as on a cached
    route. Before: the read was kept, written to the cassette and replayed."""
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy(*RECORDING, "--cassette", str(tape))
    nostore = AUTH | {"Cache-Control": "no-store"}
    relayed = httpx.get(recorder.v1 + "/models/gpt-4o", headers=nostore)
    assert relayed.status_code == 200 and relayed.headers["X-Repro-Cache"] == "BYPASS"
    assert "X-Repro-Key" not in relayed.headers
    kept = httpx.get(recorder.v1 + "/models", headers=AUTH)  # the user's case, beside it
    assert kept.headers["X-Repro-Cache"] == "REFRESH"
    stop(recorder)
    assert routes(tape) == ["GET /v1/models"]
    replayer = start_proxy(*RECORDING, "--cassette", str(tape), "--cache-mode", "replay")
    assert httpx.get(replayer.v1 + "/models", headers=AUTH).headers["X-Repro-Cache"] == "HIT"
    refused = httpx.get(replayer.v1 + "/models", headers=nostore)
    assert refused.status_code == 501
    assert refused.json()["error"]["code"] == "replay_passthrough"


def test_only_if_cached_never_reaches_the_upstream_of_a_recording(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """A recording process serves no read from its store, so `only-if-cached` is the 504 it
    promises. Before: the read went upstream, was answered and kept."""
    tape = tmp_path / "llm.jsonl"
    with Scripted(fixed(LISTED)) as upstream:
        recorder = start_proxy(*RECORDING, "--cassette", str(tape), upstream=upstream.v1)
        refused = httpx.get(
            recorder.v1 + "/batches/batch_1", headers=AUTH | {"Cache-Control": "only-if-cached"}
        )
        assert refused.status_code == 504
        assert refused.json()["error"]["code"] == "cache_miss"
        stop(recorder)
    assert upstream.received == []
    assert routes(tape) == []


def test_a_semicolon_beside_a_query_credential_is_refused_on_a_read(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """The key names the query without its credential, cut at `&` and `;` and joined by `&`:
    `purpose=batch;x=1&key=K` shared the key of `purpose=batch&x=1&key=K`, which an upstream
    splitting at `&` alone reads otherwise. Refused (400) before the upstream, as on the
    cached routes; the same query with `&` alone is kept."""
    tape = tmp_path / "llm.jsonl"
    with Scripted(fixed(LISTED)) as upstream:
        recorder = start_proxy(*RECORDING, "--cassette", str(tape), upstream=upstream.v1)
        refused = httpx.get(recorder.v1 + "/files?purpose=batch;x=1&key=" + KEY)
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "query"
        assert upstream.received == []
        kept = httpx.get(recorder.v1 + "/files?purpose=batch&x=1&key=" + KEY)
        assert kept.status_code == 200 and kept.headers["X-Repro-Cache"] == "REFRESH"
        stop(recorder)
    assert routes(tape) == ["GET /v1/files"] and KEY not in tape.read_text()


def test_a_signed_query_is_neither_kept_nor_keyed(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """A gateway taking a signature (`sig`, as an Azure SAS) or a function key (`code`) in the
    URL: the cassette's `query` held both in the clear. Now they are credentials, as a
    signed URL's in a body: the tenant, not the key, and never written."""
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy(*RECORDING, "--cassette", str(tape))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi."}]}
    signed = recorder.post("/chat/completions?sig=SIGSECRET-1&code=CODESECRET-1&a=1", body)
    assert signed.status_code == 200 and signed.headers["X-Repro-Cache"] == "MISS"
    read = httpx.get(recorder.v1 + "/models?sig=SIGSECRET-2", headers=AUTH)
    assert read.headers["X-Repro-Cache"] == "REFRESH"
    stop(recorder)
    text = tape.read_text()
    assert "SECRET" not in text
    assert sorted(orjson.loads(line)["query"] for line in text.splitlines()) == ["", "a=1"]
