"""Answers the current API gives (openai 3.63.0's types) that the sim does not, from a scripted
upstream, read by the official SDK through the proxy: a chat audio answer whose id has expired
upstream is not served again in readwrite mode, and an answer whose requested moderation
failed is not stored."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from openai import OpenAI

from tests.fixtures_procs import ProxyFactory
from tests.hostile import Received, Scripted, http_answer

FINGERPRINT = "fp_drift"


def answering(**beside: Any) -> Scripted:
    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        body = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-audio-mini",
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": None, **beside.get("message", {})},
                }
            ],
            **{k: v for k, v in beside.items() if k != "message"},
        }
        writer.write(http_answer(orjson.dumps(body), "Content-Type: application/json"))
        await writer.drain()

    return Scripted(write)


def twice(base_url: str, **extra: Any) -> list[str]:
    client = OpenAI(base_url=base_url, api_key="sk-drift", max_retries=0)
    ask: dict[str, Any] = {
        "model": "gpt-audio-mini",
        "messages": [{"role": "user", "content": "Say hi."}],
        **extra,
    }
    return [
        client.chat.completions.with_raw_response.create(**ask).headers["X-Repro-Cache"]
        for _ in range(2)
    ]


@pytest.mark.parametrize(
    ("lives_for", "flags", "second"),
    [
        (-1, (), "MISS"),
        (3600, (), "HIT"),
        # pin serves what was stored, for suites that must never change (the plugin's
        # new_episodes runs in readwrite mode with it)
        (-1, ("--fingerprint-policy", "pin"), "HIT"),
    ],
)
def test_an_audio_answer_past_its_ids_expiry_is_asked_again(
    start_proxy: ProxyFactory, lives_for: int, flags: tuple[str, ...], second: str
) -> None:
    audio = {
        "id": "audio_abc",
        "data": "UklGRg==",
        "transcript": "Hi.",
        "expires_at": int(time.time()) + lives_for,
    }
    with answering(message={"audio": audio}) as upstream:
        proxy = start_proxy(*flags, upstream=upstream.v1)
        seen = twice(
            proxy.v1,
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "wav"},
        )
    assert seen == ["MISS", second]
    assert len(upstream.received) == (2 if second == "MISS" else 1)


MODERATED = {"model": "omni-moderation-latest"}
RESULTS = {"type": "moderation_results", "model": "omni-moderation-latest", "results": []}
FAILED = {"type": "error", "code": "moderation_unavailable", "message": "Try again."}


@pytest.mark.parametrize(("output", "second"), [(FAILED, "MISS"), (RESULTS, "HIT")])
def test_an_answer_whose_moderation_failed_is_asked_again(
    start_proxy: ProxyFactory, output: dict[str, Any], second: str
) -> None:
    moderation = {"input": RESULTS, "output": output}
    with answering(message={"content": "Hi."}, moderation=moderation) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        seen = twice(proxy.v1, moderation=MODERATED)
    assert seen == ["MISS", second]
