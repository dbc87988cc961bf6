"""Cassettes are committed to repositories: no credential a caller sent, in any header the proxy
reads as one, nor the proxy's own secrets, reaches a cassette, an export or a diff."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from tests.fixtures_procs import ProxyFactory, Sim, run_cli

ADMIN = "adm-Token-5b1d0c"
HMAC_SECRET = "hmac-Secret-9e77aa"


def carrier(number: int) -> str:
    """A key the sim accepts, sent beside headers it does not read (it wants one of its own)."""
    return f"Carrier-{number}-e5f1"


CREDENTIALS = [
    ("/v1/chat/completions", {"Authorization": "Bearer sk-Bearer-41f0"}),
    ("/v1/chat/completions", {"Authorization": "Basic dXNlcjpCYXNpYy0zM2E5"}),
    ("/v1/chat/completions", {"api-key": "Apikey-77c2"}),
    ("/v1/chat/completions", {"x-api-key": "Xapikey-d01e"}),
    ("/v1/chat/completions", {"Ocp-Apim-Subscription-Key": "Apim-5ab3"}),
    ("/v1/chat/completions", {"cf-aig-authorization": "Bearer Cloudflare-2c1a"}),
    ("/v1/chat/completions", {"x-goog-api-key": "Goog-8d2e"}),
    (
        "/v1/chat/completions",
        {"x-portkey-api-key": "Portkey-51f9", "x-portkey-virtual-key": "Vk-0b7c"},
    ),
    ("/v1/chat/completions", {"X-Gateway-Key": "Gateway-90bd"}),
    ("/v1/chat/completions", {"Authorization": "Bearer sk-Two-aa01", "x-api-key": "Both-c3d4"}),
    ("/v1/embeddings", {"api-key": "Embedding-6f1e"}),
]
SECRETS = [
    ADMIN,
    HMAC_SECRET,
    "dXNlcjpCYXNpYy0zM2E5",
    "Basic-33a9",
    *(value.split(" ")[-1] for _, headers in CREDENTIALS for value in headers.values()),
    *(carrier(number) for number in range(len(CREDENTIALS))),
]


def test_no_credential_reaches_a_cassette_an_export_or_a_diff(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy(
        "--cache-scope", "shared", "--cassette", str(tape), "--credential-header", "X-Gateway-Key",
        "--admin-token", ADMIN, "--secret", HMAC_SECRET,
    )  # fmt: skip
    base = recorder.v1.removesuffix("/v1")
    for number, (path, headers) in enumerate(CREDENTIALS):
        body: dict[str, object] = {"model": "gpt-4o-mini", "input": f"Ask {number}."}
        if path.endswith("/chat/completions"):
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"Ask {number}."}],
            }
        own = "Bearer" in headers.get("Authorization", "") or "api-key" in headers
        sent = headers if own else {"api-key": carrier(number)} | headers
        answer = httpx.post(base + path, json=body, headers=sent, timeout=10)
        assert answer.status_code == 200, (headers, answer.text)
        assert answer.headers["X-Repro-Cache"] == "MISS"
    export = httpx.get(
        base + "/admin/export", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
    )
    assert export.status_code == 200
    assert len(export.content.splitlines()) == len(CREDENTIALS)
    recorder.proc.send_signal(signal.SIGTERM)
    assert recorder.proc.wait(timeout=15) == 0
    written = tape.read_bytes()
    assert b"Ask 0." in written
    assert len(written.splitlines()) == len(CREDENTIALS)
    changed = tmp_path / "changed.jsonl"
    changed.write_bytes(written.replace(b"Ask 0.", b"Ask 9."))
    diffed = run_cli("cassette", "diff", str(tape), str(changed))
    json_diff = run_cli("cassette", "diff", "--json", str(tape), str(changed))
    assert diffed.returncode == json_diff.returncode == 1
    outputs = [written, export.content, (diffed.stdout + json_diff.stdout).encode()]
    for secret in SECRETS:
        for output in outputs:
            assert secret.encode() not in output, secret
            assert secret.lower().encode() not in output.lower(), secret


def test_a_key_in_the_query_makes_the_tenant_and_reaches_no_cassette(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """Azure API Management takes `subscription-key` in the URL, Google `key`: read as
    credentials, they partition the cache as a header does and are neither keyed nor stored."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Ask by URL."}]}
    bearer = {"Authorization": "Bearer sk-Query-7e21"}
    query = "subscription-key=Query-Sub-1a2b&key=Query-Key-3c4d"

    def ask(proxy_v1: str, query: str) -> httpx.Response:
        url = f"{proxy_v1}/chat/completions?{query}"
        return httpx.post(url, json=body, headers=bearer, timeout=10)

    partitioned = start_proxy()  # --cache-scope key, the default
    assert ask(partitioned.v1, query).headers["X-Repro-Cache"] == "MISS"
    assert ask(partitioned.v1, query).headers["X-Repro-Cache"] == "HIT"
    other = ask(partitioned.v1, "subscription-key=Query-Sub-ffff&key=Query-Key-3c4d")
    assert other.headers["X-Repro-Cache"] == "MISS"  # another key in the URL: another tenant

    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy(
        "--cache-scope", "shared", "--cassette", str(tape), "--admin-token", ADMIN
    )  # fmt: skip
    first = ask(recorder.v1, query)
    assert first.status_code == 200 and first.headers["X-Repro-Cache"] == "MISS"
    base = recorder.v1.removesuffix("/v1")
    export = httpx.get(
        base + "/admin/export", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
    )
    assert export.status_code == 200 and b"Ask by URL." in export.content
    recorder.proc.send_signal(signal.SIGTERM)
    assert recorder.proc.wait(timeout=15) == 0
    written = tape.read_bytes()
    assert b"Ask by URL." in written
    for output in (written, export.content):
        for secret in (b"Query-Sub-1a2b", b"Query-Key-3c4d", b"sk-Query-7e21"):
            assert secret not in output
    replayer = start_proxy(
        "--cache-scope", "shared", "--cassette", str(tape), "--cache-mode", "replay"
    )  # fmt: skip
    replayed = ask(replayer.v1, query)
    assert replayed.status_code == 200 and replayed.headers["X-Repro-Cache"] == "HIT"
    assert replayed.content == first.content
