"""Cassettes: record with a proxy, replay offline in CI, move answers between stores."""

from __future__ import annotations

import base64
import signal
from pathlib import Path

import httpx
import orjson
from openai import OpenAI

from tests.fixtures_procs import Proxy, ProxyFactory, Sim, free_port, run_cli

MESSAGES = [{"role": "user", "content": "Record me."}]


def sdk(proxy: Proxy, key: str) -> OpenAI:
    return OpenAI(base_url=proxy.v1, api_key=key, max_retries=0)


def traffic(proxy: Proxy, key: str) -> list[bytes]:
    """A chat answer, a streamed chat answer and an embedding, as raw bytes."""
    with sdk(proxy, key) as client:
        chat = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        ) as stream:
            streamed = stream.read()
        embedding = client.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input="Record me."
        )
    return [chat.http_response.content, streamed, embedding.http_response.content]


def stop(proxy: Proxy) -> None:
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(timeout=15) == 0


def test_record_then_replay_offline_with_another_key(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    recorded = traffic(recorder, "sk-recording-key")
    stop(recorder)
    text = tape.read_text()
    assert len(text.splitlines()) == 3
    assert "sk-recording-key" not in text
    assert "Record me." in text
    offline = f"http://127.0.0.1:{free_port()}/v1"
    replayer = start_proxy(
        "--cache-scope",
        "shared",
        "--cassette",
        str(tape),
        "--cache-mode",
        "replay",
        upstream=offline,
    )
    assert traffic(replayer, "sk-ci-key") == recorded
    missing = httpx.post(
        replayer.v1 + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Not recorded."}]},
        headers={"Authorization": "Bearer sk-ci-key"},
        timeout=10,
    )
    assert missing.status_code == 504
    error = missing.json()["error"]
    assert error["code"] == "cache_miss"
    assert missing.headers["X-Repro-Key"] in error["message"]
    stop(replayer)
    assert len(tape.read_text().splitlines()) == 3  # replay never rewrites the cassette


def test_a_cassette_needs_the_shared_scope(tmp_path: Path) -> None:
    result = run_cli("serve", "--cassette", str(tmp_path / "x.jsonl"))
    assert result.returncode == 2
    assert "--cache-scope shared" in result.stderr
    replay = run_cli(
        "serve",
        "--cassette",
        str(tmp_path / "none.jsonl"),
        "--cache-scope",
        "shared",
        "--cache-mode",
        "replay",
    )
    assert replay.returncode == 2
    assert "no such file" in replay.stderr


def test_export_and_import_between_redis_stores(
    start_proxy: ProxyFactory, sim: Sim, redis_server: object, redis_url: str, tmp_path: Path
) -> None:
    source = start_proxy("--store", redis_url, "--cache-scope", "shared")
    recorded = traffic(source, "sk-alice")
    with sdk(source, "sk-alice") as client:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"X-Repro-Namespace": "suite-b"}
        )
    tape = tmp_path / "all.jsonl"
    exported = run_cli("export", "--store", redis_url, "--output", str(tape))
    assert exported.returncode == 0, exported.stderr
    assert len(tape.read_text().splitlines()) == 4
    only_b = run_cli("export", "--store", redis_url, "--namespace", "suite-b")
    assert len(only_b.stdout.splitlines()) == 1
    only_embeddings = run_cli("export", "--store", redis_url, "--model", "text-embedding-3-small")
    assert len(only_embeddings.stdout.splitlines()) == 1

    target = redis_url.rsplit("/", 1)[0] + "/1"
    imported = run_cli("import", "--store", target, str(tape))
    assert imported.returncode == 0, imported.stderr
    offline = f"http://127.0.0.1:{free_port()}/v1"
    replay = start_proxy(
        "--store", target, "--cache-scope", "shared", "--cache-mode", "replay", upstream=offline
    )
    assert traffic(replay, "sk-anyone") == recorded


def test_an_export_without_the_stores_encryption_key_is_refused(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str
) -> None:
    """docs/operations.md: export takes --encryption-key when the store has one. Without it the
    sealed answers cannot be read: the command says so, rather than write an empty cassette."""
    key = base64.b64encode(b"k" * 32).decode()
    source = start_proxy("--store", redis_url, env={"REPRO_ENCRYPTION_KEY": key})
    traffic(source, "sk-alice")
    blind = run_cli("export", "--store", redis_url)
    assert (blind.returncode, blind.stdout) == (2, "")
    assert "--encryption-key" in blind.stderr and key not in blind.stderr
    opened = run_cli("export", "--store", redis_url, env={"REPRO_ENCRYPTION_KEY": key})
    assert len(opened.stdout.splitlines()) == 3 and "left out" not in opened.stderr


def test_import_for_one_key_scope(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, tmp_path: Path
) -> None:
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tmp_path / "t.jsonl"))
    recorded = traffic(recorder, "sk-alice")
    stop(recorder)
    # The key and the secret from the environment: arguments are visible to every local user.
    imported = run_cli(
        "import",
        "--store",
        redis_url,
        "--cache-scope",
        "key",
        str(tmp_path / "t.jsonl"),
        env={"OPENAI_API_KEY": "sk-alice", "REPRO_SECRET": "s3-sixteen-bytes"},
    )
    assert imported.returncode == 0, imported.stderr
    offline = f"http://127.0.0.1:{free_port()}/v1"
    replay = start_proxy(
        "--store",
        redis_url,
        "--secret",
        "s3-sixteen-bytes",
        "--cache-mode",
        "replay",
        upstream=offline,
    )
    assert traffic(replay, "sk-alice") == recorded
    other = httpx.post(
        replay.v1 + "/chat/completions",
        content=orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}),
        headers={"Authorization": "Bearer sk-bob", "Content-Type": "application/json"},
        timeout=10,
    )
    assert other.status_code == 504


def test_cassette_diff_tells_a_rerecording_that_drifted(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    def recording(name: str) -> str:
        tape = tmp_path / name
        recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
        traffic(recorder, "sk-recording-key")
        stop(recorder)
        return str(tape)

    first, again = recording("first.jsonl"), recording("again.jsonl")
    same = run_cli("cassette", "diff", first, again, "--json")
    assert same.returncode == 0, same.stderr
    assert orjson.loads(same.stdout)["summary"]["identical"] == 3
    sim.set_fingerprint("fp_rotated")  # the sim's seeded answers change with its fingerprint
    rotated = recording("rotated.jsonl")
    drifted = run_cli("cassette", "diff", first, rotated)
    assert drifted.returncode == 1
    assert "2 changed, 0 only_old, 0 only_new, 1 identical" in drifted.stdout  # chat and stream
    report = orjson.loads(run_cli("cassette", "diff", first, rotated, "--json").stdout)
    changed = [row for row in report["requests"] if row["status"] == "changed"]
    assert {(row["old"]["fingerprint"], row["new"]["fingerprint"]) for row in changed} == {
        ("fp_sim_0001", "fp_rotated")
    }
    assert all(0 < row["distance"] <= 1 for row in changed)
    missing = run_cli("cassette", "diff", first, str(tmp_path / "none.jsonl"))
    assert missing.returncode == 2
    assert missing.stderr.startswith("repro-proxy cassette diff: ")


def test_a_hang_up_stops_with_a_drain_and_writes_the_cassette(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """The terminal or ssh session that ran `serve --cassette` closed: SIGHUP's default killed
    the process at once, every request in flight and the whole session's recording lost."""
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    traffic(recorder, "sk-recording-key")
    recorder.proc.send_signal(signal.SIGHUP)
    assert recorder.proc.wait(timeout=15) == 0
    assert len(tape.read_text().splitlines()) == 3
