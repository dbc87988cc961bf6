"""A chat request whose image part's URL is presigned (S3): the upstream gets the URL as
sent, but neither an export nor a recorded cassette holds its signature, credential or token,
only their SHA-256, and a replaying proxy fed the cassette still answers the live request.
Before, both held a signature granting read access to the private object until it expired.
Real proxy and sim processes, the official openai SDK."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import httpx
from openai import OpenAI

from tests.fixtures_procs import Proxy, ProxyFactory, Sim, free_port

TOKEN = "admin-secret"
OBJECT = "https://private-bucket.s3.us-east-1.amazonaws.com/scans/passport.png"
SECRETS = (
    "AKIAEXAMPLEKEY%2F20261206",
    "IQoJb3JpZ2luX2VjSessionTok",
    "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
)
URL = (
    f"{OBJECT}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={SECRETS[0]}"
    f"&X-Amz-Expires=900&X-Amz-Security-Token={SECRETS[1]}&X-Amz-Signature={SECRETS[2]}"
)


def ask(proxy: Proxy, key: str) -> tuple[str, str]:
    """X-Repro-Cache and the answer's text, through the SDK."""
    with OpenAI(base_url=proxy.v1, api_key=key, max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What document is this?"},
                        {"type": "image_url", "image_url": {"url": URL, "detail": "low"}},
                    ],
                }
            ],
        )
        return raw.headers["X-Repro-Cache"], raw.parse().choices[0].message.content or ""


def test_no_export_or_cassette_holds_a_presigned_urls_signature_and_it_replays(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    flags = ("--cache-scope", "shared", "--admin-token", TOKEN)
    recorder = start_proxy(*flags, "--cassette", str(tape))
    state, text = ask(recorder, "sk-recording")
    assert state == "MISS"
    assert URL in str(sim.llm_requests()[-1]["body"])  # the upstream got it as sent
    exported = httpx.get(
        recorder.url + "/admin/export", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    ).text
    recorder.proc.send_signal(signal.SIGTERM)  # the cassette is written as the proxy stops
    assert recorder.proc.wait(timeout=15) == 0
    recorded = tape.read_text()
    for kept in (exported, recorded):
        assert kept.count("\n") == 1 and OBJECT in kept and "X-Amz-Expires=900" in kept
        for secret in SECRETS:
            assert secret not in kept, kept
            assert hashlib.sha256(secret.encode()).hexdigest() in kept
    offline = f"http://127.0.0.1:{free_port()}/v1"
    replayer = start_proxy(
        *flags, "--cassette", str(tape), "--cache-mode", "replay", upstream=offline
    )
    assert ask(replayer, "sk-ci") == ("HIT", text)
