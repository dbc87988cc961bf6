"""An upstream that echoes the caller's key into its answer, in `shared` scope. Stored, that
answer went to every tenant sending the same body (tenant B read tenant A's key off a HIT) and
into the cassette and the export users commit. It is now relayed to its caller as sent and
never stored: B asks the upstream, and nothing written holds a key."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import httpx
import orjson
import pytest

from bench.procs import stop
from tests.fixtures_procs import launch_proxy, wait_up
from tests.hostile import Received, Scripted, completion, http_answer, sse_frames

TOKEN = "admin-secret-for-echo"
# A `/` in each: the upstream below escapes it as PHP does (`\/`), as a JSON field may.
KEY_A = "sk-proj-tenantA/7f3c9e1b2d4a6c8e0f1a3b5c7d9e"
KEY_B = "sk-proj-tenantB/1a2b3c4d5e6f708192a3b4c5d6e7"
MODELS = orjson.dumps({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})
REFUSED = orjson.dumps({"error": {"message": "bad key", "type": "invalid_request_error"}})


def _model_list(request: Received) -> bytes | None:
    """The answer to a key check's model list, None to any other request: real-looking keys
    are listed, the proxy's made-up ones (`sk-repro-`) refused, so the list vouches for keys."""
    if not request.request_line.startswith("GET /v1/models"):
        return None
    if "sk-repro-" in request.headers.get("authorization", ""):
        return http_answer(REFUSED, "Content-Type: application/json", status="401 No")
    return http_answer(MODELS, "Content-Type: application/json")


def _echoing() -> Scripted:
    """An upstream answering a chat request, whole or streamed, with the Authorization header
    it got, `/` escaped as `\\/` (and a key check's `_model_list`)."""

    async def write(writer: asyncio.StreamWriter, request: Received) -> None:
        authorization = request.headers.get("authorization", "")
        answer = _model_list(request)
        if answer is None:
            said = "Debug: you sent " + authorization
            if orjson.loads(request.body).get("stream"):
                body, kind = sse_frames(said), "Content-Type: text/event-stream"
            else:
                body, kind = completion(said), "Content-Type: application/json"
            answer = http_answer(body.replace(b"/", b"\\/"), kind)
        writer.write(answer)
        await writer.drain()

    return Scripted(write)


def _ask(url: str, key: str, stream: bool) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def _escaped(key: str) -> bytes:
    return key.replace("/", "\\/").encode()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_echoed_key_reaches_its_caller_only(tmp_path: Path, stream: bool) -> None:
    cassette = tmp_path / "llm.jsonl"
    flags = ("--cache-scope", "shared", "--cassette", str(cassette), "--admin-token", TOKEN)
    with _echoing() as upstream:
        proxy = wait_up(launch_proxy(upstream.v1, *flags, stderr=subprocess.PIPE))
        try:
            first = _ask(proxy.url, KEY_A, stream)
            assert first.status_code == 200
            assert _escaped(KEY_A) in first.content  # relayed as the upstream sent it
            second = _ask(proxy.url, KEY_B, stream)
            assert second.status_code == 200
            assert _escaped(KEY_A) not in second.content  # before: a HIT holding A's key
            assert second.headers["X-Repro-Cache"] == "MISS"
            assert _escaped(KEY_B) in second.content  # its own, from the upstream
            exported = httpx.get(
                f"{proxy.url}/admin/export",
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=30,
            )
            assert exported.status_code == 200
        finally:
            proxy.proc.send_signal(signal.SIGTERM)
            _, err = proxy.proc.communicate(timeout=60)
    chats = [r for r in upstream.received if r.request_line.startswith("POST")]
    assert len(chats) == 2  # nothing was served from the cache
    written = cassette.read_bytes() if cassette.exists() else b""
    for key in (KEY_A, KEY_B):
        for leaked in (exported.content, written, err):
            assert _escaped(key) not in leaked
            assert key.split("/")[1].encode() not in leaked
    assert err.count(b"answer not stored: it holds a credential of the request") == 2


TOOL_TOKEN = "ya29.tool-oauth-token-0123456789"
TOOL_BODY = {
    "model": "o4-mini",
    "input": "Any new mail?",
    "tools": [
        {
            "type": "mcp",
            "server_label": "mail",
            "server_url": "https://mcp.example.com/sse",
            "authorization": TOOL_TOKEN,
        }
    ],
}


def _response_quoting_tools() -> Scripted:
    """An upstream whose Responses answer quotes the tools it was sent, tokens included."""

    async def write(writer: asyncio.StreamWriter, request: Received) -> None:
        listed = _model_list(request)
        if listed is not None:
            writer.write(listed)
            await writer.drain()
            return
        said = "Calling with " + orjson.loads(request.body)["tools"][0]["authorization"]
        answer = {
            "id": "resp_echo1",
            "object": "response",
            "status": "completed",
            "model": "o4-mini",
            "output": [
                {
                    "type": "message",
                    "id": "msg_1",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": said, "annotations": []}],
                }
            ],
            "usage": {"input_tokens": 3, "output_tokens": 3, "total_tokens": 6},
        }
        writer.write(http_answer(orjson.dumps(answer), "Content-Type: application/json"))
        await writer.drain()

    return Scripted(write)


def test_a_tools_token_echoed_is_never_recorded(tmp_path: Path) -> None:
    cassette = tmp_path / "llm.jsonl"
    with _response_quoting_tools() as upstream:
        flags = ("--cache-scope", "shared", "--cassette", str(cassette))
        proxy = wait_up(launch_proxy(upstream.v1, *flags))
        try:
            url, key = f"{proxy.url}/v1/responses", {"Authorization": f"Bearer {KEY_A}"}
            for _ in range(2):
                sent = httpx.post(url, json=TOOL_BODY, headers=key, timeout=30)
                assert sent.status_code == 200
                assert sent.headers["X-Repro-Cache"] == "MISS"  # before: a HIT the 2nd time
                assert TOOL_TOKEN.encode() in sent.content
        finally:
            proxy.proc.send_signal(signal.SIGTERM)
            proxy.proc.communicate(timeout=60)
    assert sum(r.request_line.startswith("POST") for r in upstream.received) == 2
    assert TOOL_TOKEN.encode() not in (cassette.read_bytes() if cassette.exists() else b"")


def test_a_key_echoed_in_the_content_type_is_not_stored() -> None:
    """The Content-Type is stored and served with the body (8 KiB of it)."""

    async def write(writer: asyncio.StreamWriter, request: Received) -> None:
        authorization = request.headers.get("authorization", "")
        listed = _model_list(request)
        kind = f"Content-Type: application/json; debug-auth={authorization.split()[-1]}"
        writer.write(listed or http_answer(completion("A colour: red."), kind))
        await writer.drain()

    with Scripted(write) as upstream:
        proxy = wait_up(launch_proxy(upstream.v1, "--cache-scope", "shared"))
        try:
            assert KEY_A in _ask(proxy.url, KEY_A, False).headers["Content-Type"]
            # Not stored, but the model's answer: its fingerprint is learnt.
            learnt = {"model": "gpt-4o-mini", "fingerprint": "fp_hostile"}
            assert proxy.metric("repro_fingerprint_info", **learnt) == 1
            second = _ask(proxy.url, KEY_B, False)
            assert KEY_A not in second.headers["Content-Type"]
            assert second.headers["X-Repro-Cache"] == "MISS"
        finally:
            stop(proxy.proc)
