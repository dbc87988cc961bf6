"""A credential a gateway takes in the request body (LiteLLM's client-side `api_key`,
`azure_ad_token`, an `extra_headers` object, a key in `metadata`) reaches the upstream as sent,
and nowhere else: a recorded cassette (committed to a repository) and the store name it by its
SHA-256, an answer echoing it is never stored, and in `shared` scope the answer it fetched is
its tenant's own. Before, every such value sat in the cassette verbatim. Real proxy and sim
processes, a scripted upstream for the echo."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.e2e.test_e2e_cassette import stop
from tests.fixtures_procs import Proxy, ProxyFactory, Sim, free_port
from tests.hostile import Received, Scripted, completion, http_answer

SECRETS = {
    "api_key": "sk-gateway-key-in-the-body",
    "azure_ad_token": "eyJ-azure-ad-token-in-the-body",
    "extra_headers": {"Authorization": "Bearer sk-inner-key-in-headers"},
    "metadata": {"run": "nightly"},  # which a stored chat completion quotes back
}
SENT = ("sk-gateway-key-in-the-body", "eyJ-azure", "sk-inner-key")
BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Which key am I?"}],
    **SECRETS,
}
IN_METADATA = {**BODY, "metadata": {"api_key": "sk-key-in-metadata", "run": "nightly"}}


def ask(proxy: Proxy, key: str, body: dict[str, Any] = BODY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(proxy.v1 + "/chat/completions", json=body, headers=headers, timeout=10)


def test_a_cassette_holds_no_body_credential_and_still_replays(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    first = ask(recorder, "sk-recording-key")
    assert first.headers["X-Repro-Cache"] == "MISS"
    received = sim.llm_requests()[-1]["body"]
    assert all(secret in str(received) for secret in SENT)  # the upstream got them as sent
    stop(recorder)
    text = tape.read_text()
    assert "Which key am I?" in text and "nightly" in text
    for secret in SENT:
        assert secret not in text, secret
    request = orjson.loads(text)["request"]
    digest = hashlib.sha256(SECRETS["api_key"].encode()).hexdigest()
    assert request["api_key"] == "sha256:" + digest  # tells keys apart
    assert request["metadata"]["run"] == "nightly"  # the rest of the metadata as sent

    offline = f"http://127.0.0.1:{free_port()}/v1"
    flags = ("--cache-scope", "shared", "--cassette", str(tape), "--cache-mode", "replay")
    replayer = start_proxy(*flags, upstream=offline)
    again = ask(replayer, "sk-ci-key")
    assert again.headers["X-Repro-Cache"] == "HIT"
    assert again.json() == first.json()
    other = {**BODY, "api_key": "sk-another-gateway-key"}
    assert ask(replayer, "sk-ci-key", other).status_code == 504  # another key, another request


def test_in_shared_scope_the_answer_a_body_key_fetched_is_its_tenants_own(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy("--cache-scope", "shared")
    owner = ask(proxy, "sk-owner")
    assert owner.headers["X-Repro-Cache"] == "MISS"
    assert ask(proxy, "sk-owner").headers["X-Repro-Cache"] == "HIT"
    calls = len(sim.llm_requests())
    other = ask(proxy, "sk-other")
    assert other.headers["X-Repro-Cache"] == "MISS"
    assert other.headers["X-Repro-Key"] != owner.headers["X-Repro-Key"]
    assert len(sim.llm_requests()) == calls + 1
    plain = {"model": "gpt-4o-mini", "messages": BODY["messages"]}  # no credential: shared
    assert ask(proxy, "sk-owner", plain).headers["X-Repro-Cache"] == "MISS"
    assert ask(proxy, "sk-other", plain).headers["X-Repro-Cache"] == "HIT"


async def echoer(writer: asyncio.StreamWriter, received: Received) -> None:
    """An upstream that quotes the body's credentials back in its answer."""
    if received.request_line.startswith("GET /v1/models"):
        writer.write(
            http_answer(b'{"object": "list", "data": []}', "Content-Type: application/json")
        )
    else:
        body = orjson.loads(received.body)
        quoted = f"Your key is {body.get('api_key') or body['metadata']['api_key']}."
        writer.write(http_answer(completion(quoted), "Content-Type: application/json"))
    await writer.drain()


def test_an_answer_echoing_a_body_credential_is_relayed_but_never_stored(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """A stored chat completion quotes its `metadata` back, as the sim does: a key there is
    never written to a store or a cassette."""
    proxy = start_proxy("--cache-scope", "shared")
    assert [ask(proxy, "sk-a", IN_METADATA).headers["X-Repro-Cache"] for _ in range(2)] == [
        "MISS",
        "MISS",
    ]
    with Scripted(echoer) as upstream:
        proxy = start_proxy("--cache-scope", "shared", upstream=upstream.v1)
        for body in (BODY, {**IN_METADATA, "api_key": None}):  # the key alone in `metadata`
            sent = [ask(proxy, "sk-a", body) for _ in range(2)]
            assert [r.headers["X-Repro-Cache"] for r in sent] == ["MISS", "MISS"]
            assert "sk-" in sent[0].json()["choices"][0]["message"]["content"]
