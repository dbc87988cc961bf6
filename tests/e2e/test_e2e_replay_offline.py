"""Replay mode, what CI runs, opens no connection to the upstream: whatever a client asks (any
route, method, cache directive, Azure shape, a response by id) and whatever runs in the
background (probes, drift checks, key checks), against an upstream that counts connections."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from tests.fixtures_procs import Proxy, ProxyFactory, Sim
from tests.hostile import Scripted, fixed, http_answer

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Offline."}]}
RESPONSE = {"model": "gpt-4o-mini", "input": "Offline."}
KEY = {"Authorization": "Bearer sk-ci"}
ADMIN = {"Authorization": "Bearer adm-offline"}


def stop(proxy: Proxy) -> None:
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(timeout=15) == 0


def record(start_proxy: ProxyFactory, tape: Path) -> str:
    """A chat answer and a Responses answer; the response's id."""
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    assert httpx.post(recorder.v1 + "/chat/completions", json=CHAT, headers=KEY).status_code == 200
    made = httpx.post(recorder.v1 + "/responses", json=RESPONSE, headers=KEY, timeout=10)
    assert made.status_code == 200
    stop(recorder)
    return str(made.json()["id"])


def asked(response_id: str) -> list[tuple[str, str, dict[str, object] | None, dict[str, str]]]:
    """(method, path under the proxy's root, JSON body, extra headers) for every kind of request."""
    directives = ["no-cache", "no-store", "max-age=0", "only-if-cached", "no-cache, no-store"]
    other = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Not recorded."}]}
    cases: list[tuple[str, str, dict[str, object] | None, dict[str, str]]] = []
    for body in (CHAT, other):
        cases.append(("POST", "/v1/chat/completions", body, {}))
        for directive in directives:
            cases.append(("POST", "/v1/chat/completions", body, {"Cache-Control": directive}))
        cases.append(("POST", "/v1/chat/completions", body, {"Pragma": "no-cache"}))
    cases += [
        ("POST", "/v1/chat/completions", CHAT | {"stream": True}, {}),
        ("POST", "/v1/responses", RESPONSE, {"Cache-Control": "no-cache"}),
        ("POST", "/v1/responses", RESPONSE | {"background": True}, {}),
        ("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}, {}),
        ("GET", f"/v1/responses/{response_id}", None, {}),
        ("GET", f"/v1/responses/{response_id}?stream=true", None, {}),
        ("GET", "/v1/responses/resp_unknown", None, {}),
        ("DELETE", f"/v1/responses/{response_id}", None, {}),
        ("POST", f"/v1/responses/{response_id}/cancel", None, {}),
        ("GET", f"/v1/responses/{response_id}/input_items", None, {}),
        (
            "POST",
            "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21",
            CHAT,
            {"api-key": "azure-ci"},
        ),
        ("POST", "/openai/v1/chat/completions", CHAT, {"api-key": "azure-ci"}),
        ("POST", "/openai/responses?api-version=2025-04-01-preview", RESPONSE, {}),
    ]
    cases += [
        ("GET", f"/openai/v1/responses/{response_id}", None, {}),
        ("GET", "/openai/v1/models", None, {}),
        ("POST", "/openai/deployments/gpt-4o-mini/files?api-version=2024-10-21", None, {}),
    ]
    cases += [("GET", path, None, {}) for path in ("/healthz", "/readyz", "/metrics")]
    cases += [
        ("GET", f"/admin/{name}", None, ADMIN)
        for name in ("stats", "fingerprints", "rotations", "export", "ui")
    ]
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"):
        for path in (
            "/v1/models",
            "/v1/files",
            "/v1/batches/b1",
            "/v1/%2e%2e/x",
            "/v1/audio/transcriptions",
        ):
            cases.append((method, path, None, {}))
    return cases


def test_replay_opens_no_connection_to_the_upstream(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    response_id = record(start_proxy, tape)
    answer = http_answer(b'{"object":"list","data":[]}', "Content-Type: application/json")
    with Scripted(fixed(answer)) as upstream:
        replayer = start_proxy(
            "--cache-scope", "shared", "--cassette", str(tape), "--cache-mode", "replay",
            "--verify-rate", "1", "--probe-interval", "0.05", "--probe-key", "sk-probe",
            "--key-check-interval", "0.05", "--fingerprint-policy", "follow",
            "--admin-token", "adm-offline",
            upstream=upstream.v1,
        )  # fmt: skip
        root = replayer.v1.removesuffix("/v1")
        statuses: dict[tuple[str, str], int] = {}
        with httpx.Client(base_url=root, headers=KEY, timeout=10) as client:
            for method, path, body, headers in asked(response_id):
                reply = client.request(method, path, json=body, headers=headers)
                assert reply.status_code < 500 or reply.status_code in (501, 504), (path, reply)
                statuses.setdefault((method, path), reply.status_code)
            imported = client.post(
                "/admin/import",
                content=tape.read_bytes(),
                headers=ADMIN | {"Content-Type": "application/x-ndjson"},
            )
            assert imported.status_code == 200
            time.sleep(0.5)  # ten probe and key-check intervals
            again = client.post("/v1/chat/completions", json=CHAT)
        assert again.headers["X-Repro-Cache"] == "HIT"
        assert statuses["POST", "/v1/chat/completions"] == 200
        assert statuses["GET", f"/v1/responses/{response_id}"] == 200
        assert statuses["GET", f"/openai/v1/responses/{response_id}"] == 200
        assert statuses["GET", "/v1/models"] == 504  # a read, which this cassette lacks
        assert statuses["POST", "/v1/files"] == 501
        assert statuses["GET", "/admin/export"] == 200
        stop(replayer)
        assert upstream.connections == 0
        assert upstream.received == []
