"""The simulated upstream behaves like the OpenAI API, so the proxy's e2e tests can trust it."""

from __future__ import annotations

import argparse
import asyncio
import base64
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bench.procs import free_port
from proxy.tools.sim import add_arguments, settings_from_args
from proxy.tools.sim.app import create_sim_app
from proxy.tools.sim.state import SimSettings

AUTH = {"Authorization": "Bearer sk-test"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}], "seed": 7}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        },
    },
}


@asynccontextmanager
async def sim(**overrides: Any) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_sim_app(SimSettings(**overrides)))) as client:
        yield client


async def post(client: TestClient[Any, Any], path: str, body: dict[str, Any]) -> Any:
    resp = await client.post(path, json=body, headers=AUTH)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def chat_text(client: TestClient[Any, Any], body: dict[str, Any]) -> str:
    answer = await post(client, "/v1/chat/completions", body)
    return str(answer["choices"][0]["message"]["content"])


async def stream_frames(client: TestClient[Any, Any], path: str, body: dict[str, Any]) -> list[str]:
    resp = await client.post(path, json=body | {"stream": True}, headers=AUTH)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    raw = (await resp.read()).decode()
    assert raw.endswith("\n\n")
    frames = raw[: -len("\n\n")].split("\n\n")
    assert all(frame.startswith("data: ") for frame in frames)
    return [frame[len("data: ") :] for frame in frames]


async def add_fault(client: TestClient[Any, Any], **fault: Any) -> None:
    resp = await client.post("/_sim/faults", json=fault)
    assert resp.status == 200


async def test_auth_is_required_on_v1_routes_only() -> None:
    async with sim(api_keys=("sk-good",)) as client:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer sk-bad"}):
            resp = await client.get("/v1/models", headers=headers)
            assert resp.status == 401
            error = (await resp.json())["error"]
            assert error["code"] == "invalid_api_key"
            assert error["type"] == "invalid_request_error"
            assert error["param"] is None
        ok = await client.get("/v1/models", headers={"Authorization": "Bearer sk-good"})
        assert ok.status == 200
        assert (await client.get("/_sim/stats")).status == 200


async def test_any_key_is_accepted_without_a_key_list() -> None:
    async with sim() as client:
        models = await (await client.get("/v1/models", headers=AUTH)).json()
        assert models["object"] == "list"
        assert {m["object"] for m in models["data"]} == {"model"}


async def test_a_listed_model_is_retrieved_and_another_is_a_404() -> None:
    async with sim() as client:
        listed = await (await client.get("/v1/models", headers=AUTH)).json()
        for base in ("/v1/models", "/openai/v1/models"):
            for model in listed["data"]:
                one = await client.get(f"{base}/{model['id']}", headers=AUTH)
                assert await one.json() == model
            unknown = await client.get(f"{base}/gpt-9", headers=AUTH)
            assert unknown.status == 404
            assert (await unknown.json())["error"]["param"] == "model"


async def test_errors_have_openai_shape() -> None:
    async with sim() as client:
        resp = await client.post("/v1/chat/completions", data=b"{nope", headers=AUTH)
        assert resp.status == 400
        assert set((await resp.json())["error"]) == {"message", "type", "param", "code"}
        resp = await client.post("/v1/unknown", json={}, headers=AUTH)
        assert resp.status == 404
        assert (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_chat_completion_shape() -> None:
    async with sim() as client:
        before = int(time.time())
        answer = await post(client, "/v1/chat/completions", CHAT)
        assert answer["id"].startswith("chatcmpl-")
        assert answer["object"] == "chat.completion"
        assert before <= answer["created"] <= time.time()
        assert answer["model"] == "gpt-4o-mini"
        assert answer["system_fingerprint"] == "fp_sim_0001"
        (choice,) = answer["choices"]
        assert choice["message"]["role"] == "assistant"
        assert choice["message"]["refusal"] is None
        assert choice["logprobs"] is None
        assert choice["finish_reason"] == "stop"
        words = len(choice["message"]["content"].split())
        assert 12 <= words <= 30
        usage = answer["usage"]
        assert usage["completion_tokens"] == words
        assert usage["total_tokens"] == usage["prompt_tokens"] + words


async def test_null_fingerprint() -> None:
    async with sim(fingerprint=None) as client:
        answer = await post(client, "/v1/chat/completions", CHAT)
        assert answer["system_fingerprint"] is None


async def test_text_completion_shape_and_prompt_list() -> None:
    async with sim() as client:
        body = {"model": "gpt-3.5-turbo-instruct", "prompt": ["one", "two"], "seed": 1}
        answer = await post(client, "/v1/completions", body)
        assert answer["object"] == "text_completion"
        assert [c["index"] for c in answer["choices"]] == [0, 1]
        assert all(c["text"] and c["logprobs"] is None for c in answer["choices"])
        assert answer["usage"]["prompt_tokens"] == 2


async def test_embeddings_are_deterministic_per_input() -> None:
    async with sim() as client:
        body = {"model": "text-embedding-3-small", "input": ["a cat", "a dog"]}
        first = await post(client, "/v1/embeddings", body)
        assert first["object"] == "list"
        assert [d["index"] for d in first["data"]] == [0, 1]
        assert all(len(d["embedding"]) == 16 for d in first["data"])
        single = await post(client, "/v1/embeddings", body | {"input": "a dog", "seed": 3})
        assert single["data"][0]["embedding"] == first["data"][1]["embedding"]
        assert first["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
        sized = await post(client, "/v1/embeddings", body | {"dimensions": 4})
        assert len(sized["data"][0]["embedding"]) == 4


async def test_embeddings_base64_is_little_endian_float32() -> None:
    async with sim() as client:
        body = {"model": "text-embedding-3-small", "input": "hello"}
        floats = (await post(client, "/v1/embeddings", body))["data"][0]["embedding"]
        b64 = await post(client, "/v1/embeddings", body | {"encoding_format": "base64"})
        decoded = struct.unpack("<16f", base64.b64decode(b64["data"][0]["embedding"]))
        assert decoded == pytest.approx(floats, rel=1e-6)


async def test_moderations_flag_what_the_input_names_and_nothing_else() -> None:
    async with sim() as client:
        body = {"input": ["calm words", "words of hate and violence"]}
        first = await post(client, "/v1/moderations", body)
        again = await post(client, "/v1/moderations", body)
        assert first["model"] == "omni-moderation-2024-09-26" and first["id"] != again["id"]
        assert first["results"] == again["results"]  # fixed by the input alone
        calm, hostile = first["results"]
        assert not calm["flagged"] and not any(calm["categories"].values())
        flagged = {name for name, on in hostile["categories"].items() if on}
        assert flagged == {"hate", "hate/threatening", "violence", "violence/graphic"}
        assert hostile["category_scores"]["violence"] > 0.9 > calm["category_scores"]["violence"]
        parts = [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "u"}}]
        (one,) = (await post(client, "/v1/moderations", {"input": parts}))["results"]
        assert one["category_applied_input_types"]["hate"] == ["image", "text"]
        for bad in ({"input": 3}, {"input": []}, {"input": ["x"] * 33}, {"input": "x", "model": 1}):
            resp = await client.post("/v1/moderations", json=bad, headers=AUTH)
            assert resp.status == 400, bad


async def test_a_compaction_keeps_the_user_messages_and_draws_its_summary_anew() -> None:
    async with sim() as client:
        turns = [
            {"role": "user", "content": "Plan a trip."},
            {"role": "assistant", "content": "Lisbon."},
        ]
        body = {"model": "gpt-5.4", "input": turns}
        first = await post(client, "/v1/responses/compact", body)
        again = await post(client, "/openai/v1/responses/compact", body)
        assert first["object"] == "response.compaction"
        message, summary = first["output"]
        assert (message["type"], message["role"], message["content"]) == (
            "message",
            "user",
            turns[0]["content"],
        )
        assert summary["type"] == "compaction" and summary["id"].startswith("cmp_")
        assert again["output"][-1]["encrypted_content"] != summary["encrypted_content"]
        made = await post(client, "/v1/responses", {"model": "gpt-4o-mini", "input": "Hi"})
        chained = await post(
            client, "/v1/responses/compact", {"model": "m", "previous_response_id": made["id"]}
        )
        assert chained["output"][-1]["type"] == "compaction"
        for bad, code in (
            ({"model": "m", "previous_response_id": "resp_gone"}, "previous_response_not_found"),
            ({"model": "m", "previous_response_id": ["resp_1"]}, None),
            ({"model": "m", "input": 3}, None),
        ):
            resp = await client.post("/v1/responses/compact", json=bad, headers=AUTH)
            assert resp.status == 400, bad
            assert (await resp.json())["error"]["code"] == code


async def test_a_token_count_is_a_word_a_token_of_the_input_and_instructions() -> None:
    async with sim() as client:
        body = {"model": "gpt-5.4", "input": "Three words here", "instructions": "Be brief."}
        counted = await post(client, "/v1/responses/input_tokens", body)
        assert counted == {"object": "response.input_tokens", "input_tokens": 5}
        resp = await client.post("/v1/responses/input_tokens", json={"input": 3}, headers=AUTH)
        assert resp.status == 400


async def test_images_are_pngs_another_each_time_in_the_format_asked() -> None:
    async with sim() as client:
        body = {"model": "gpt-image-1", "prompt": "a fox", "n": 2}
        first, again = [await post(client, "/v1/images/generations", body) for _ in range(2)]
        images = [base64.b64decode(item["b64_json"]) for item in first["data"]]
        assert len(images) == 2 and all(i.startswith(b"\x89PNG\r\n\x1a\n") for i in images)
        assert first["data"] != again["data"]  # no seed: a cache is what makes them alike
        assert first["usage"]["output_tokens"] == 2 * 272
        linked = await post(client, "/v1/images/generations", {"prompt": "a fox"})
        assert linked["data"][0]["url"].startswith("https://") and "usage" not in linked
        b64 = {"prompt": "a fox", "model": "dall-e-3", "response_format": "b64_json"}
        assert "b64_json" in (await post(client, "/v1/images/generations", b64))["data"][0]
        for bad in (
            {"prompt": ""},
            {"prompt": "x", "n": 11},
            {"prompt": "x", "model": "gpt-image-1", "response_format": "url"},
            {"prompt": "x", "response_format": "png"},
        ):
            resp = await client.post("/v1/images/generations", json=bad, headers=AUTH)
            assert resp.status == 400, bad


async def test_speech_is_sound_of_the_format_asked_another_take_each_time() -> None:
    async with sim() as client:
        body = {"model": "tts-1", "voice": "alloy", "input": "Hello there"}
        takes = []
        for _ in range(2):
            resp = await client.post("/v1/audio/speech", json=body, headers=AUTH)
            assert resp.status == 200 and resp.headers["Content-Type"] == "audio/mpeg"
            assert resp.headers["Transfer-Encoding"] == "chunked"
            takes.append(await resp.read())
        assert takes[0].startswith(b"ID3") and takes[0] != takes[1]  # a cache makes them alike
        wav = await client.post(
            "/v1/audio/speech", json={**body, "response_format": "wav"}, headers=AUTH
        )
        sound = await wav.read()
        assert wav.headers["Content-Type"] == "audio/wav" and sound[8:12] == b"WAVE"
        assert int.from_bytes(sound[4:8], "little") == len(sound) - 8
        events = await client.post(
            "/v1/audio/speech", json={**body, "stream_format": "sse"}, headers=AUTH
        )
        assert events.headers["Content-Type"] == "text/event-stream"
        assert b'"type":"speech.audio.done"' in await events.read()
        for bad in (
            {**body, "input": ""},
            {**body, "voice": 7},
            {**body, "response_format": "ogg"},
            {**body, "speed": 5},
            {**body, "stream_format": "chunks"},
        ):
            resp = await client.post("/v1/audio/speech", json=bad, headers=AUTH)
            assert resp.status == 400, bad


async def test_streamed_images_come_as_named_events_partial_takes_first() -> None:
    """As OpenAI's: each event named on an `event:` line, no `[DONE]`, the usage with the last;
    several images end once each; only the gpt-image models stream."""
    async with sim() as client:
        body = {"model": "gpt-image-1", "prompt": "a fox", "stream": True, "partial_images": 2}
        resp = await client.post("/v1/images/generations", json=body, headers=AUTH)
        stream = await resp.read()
        assert resp.headers["Content-Type"] == "text/event-stream" and b"[DONE]" not in stream
        frames = [frame.split(b"\n") for frame in stream.strip().split(b"\n\n")]
        kinds = [orjson.loads(data[len(b"data: ") :])["type"] for _, data in frames]
        assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
        named = [name for name, _ in frames]
        assert named == [b"event: " + kind.encode() for kind in kinds]
        assert "usage" in orjson.loads(frames[-1][1][len(b"data: ") :])
        several = await client.post(
            "/v1/images/generations", json={**body, "n": 2, "partial_images": 0}, headers=AUTH
        )
        assert (await several.read()).count(b"event: image_generation.completed") == 2
        dalle = {**body, "model": "dall-e-3", "partial_images": 0}
        assert (await client.post("/v1/images/generations", json=dalle, headers=AUTH)).status == 400


async def test_transcripts_come_in_each_format_asked_with_a_word_drawn_anew() -> None:
    async def transcribe(
        fields: dict[str, str], audio: bytes = b"ID3sound"
    ) -> aiohttp.ClientResponse:
        form = aiohttp.FormData()
        for name, value in fields.items():
            form.add_field(name, value)
        form.add_field("file", audio, filename="a.mp3", content_type="audio/mpeg")
        return await client.post("/v1/audio/transcriptions", data=form, headers=AUTH)

    async with sim() as client:
        takes = [await (await transcribe({"model": "whisper-1"})).json() for _ in range(2)]
        assert takes[0]["text"].split()[:-1] == takes[1]["text"].split()[:-1]
        assert takes[0]["usage"]["type"] == "duration"
        verbose = await transcribe({"model": "whisper-1", "response_format": "verbose_json"})
        assert (await verbose.json())["segments"][0]["start"] == 0.0
        for chosen, start in (("text", ""), ("srt", "1\n00:00:00,000 --> "), ("vtt", "WEBVTT")):
            plain = await transcribe({"model": "whisper-1", "response_format": chosen})
            assert plain.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert (await plain.text()).startswith(start)
        events = await transcribe({"model": "gpt-4o-transcribe", "stream": "true"})
        assert b'"type":"transcript.text.done"' in await events.read()
        for fields, audio in (({}, b"x"), ({"model": "m", "response_format": "mp3"}, b"x")):
            assert (await transcribe(fields, audio)).status == 400
        assert (await transcribe({"model": "m"}, b"")).status == 400


async def test_image_edits_take_a_form_or_json_and_answer_as_generations_do() -> None:
    async with sim() as client:
        form = aiohttp.FormData()
        form.add_field("prompt", "a hat")
        form.add_field("model", "gpt-image-1")
        form.add_field("image[]", b"\x89PNG one", filename="a.png", content_type="image/png")
        edited = await (await client.post("/v1/images/edits", data=form, headers=AUTH)).json()
        png = base64.b64decode(edited["data"][0]["b64_json"])
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and edited["usage"]["output_tokens"] == 272
        named = {"model": "gpt-image-1", "prompt": "a hat", "images": [{"file_id": "file-1"}]}
        by_id = await client.post("/v1/images/edits", json=named, headers=AUTH)
        assert "b64_json" in (await by_id.json())["data"][0]
        bare = aiohttp.FormData()
        bare.add_field("prompt", "a hat")
        refused = await client.post("/v1/images/edits", data=bare, headers=AUTH)
        assert refused.status == 400


async def test_files_echo_upload_size_and_type() -> None:
    async with sim() as client:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", b"x" * 1000, filename="data.jsonl")
        resp = await client.post("/v1/files", data=form, headers=AUTH)
        answer = await resp.json()
        assert answer["object"] == "file"
        assert answer["id"].startswith("file-")
        assert answer["bytes"] > 1000
        assert answer["content_type"].startswith("multipart/form-data; boundary=")


async def test_seeded_answers_follow_body_and_fingerprint() -> None:
    async with sim() as client:
        first = await chat_text(client, CHAT)
        assert await chat_text(client, CHAT | {"user": "someone"}) == first
        assert await chat_text(client, CHAT | {"seed": 8}) != first
        await client.post("/_sim/fingerprint", json={"fingerprint": "fp_new"})
        assert await chat_text(client, CHAT) != first
        fingerprint = await (await client.get("/_sim/fingerprint")).json()
        assert fingerprint == {"fingerprint": "fp_new", "fingerprints": []}


async def test_alternating_fingerprints_answer_with_each_and_text_to_match() -> None:
    async with sim() as client:
        resp = await client.post("/_sim/fingerprint", json={"fingerprints": ["fp_a", "fp_b"]})
        assert await resp.json() == {"fingerprint": "fp_sim_0001", "fingerprints": ["fp_a", "fp_b"]}
        texts: dict[str, set[str]] = {}
        for _ in range(40):  # both show with probability 1 - 2**-39
            answer = await post(client, "/v1/chat/completions", CHAT)
            content = answer["choices"][0]["message"]["content"]
            texts.setdefault(answer["system_fingerprint"], set()).add(content)
        assert set(texts) == {"fp_a", "fp_b"}
        assert all(len(seen) == 1 for seen in texts.values())  # text fixed per fingerprint
        assert texts["fp_a"] != texts["fp_b"]
        await client.post("/_sim/fingerprint", json={"fingerprint": "fp_c"})  # ends alternation
        assert (await post(client, "/v1/chat/completions", CHAT))["system_fingerprint"] == "fp_c"
        for bad in ({"fingerprints": "fp_a"}, {"fingerprints": [""]}, {}):
            assert (await client.post("/_sim/fingerprint", json=bad)).status == 400


async def test_drift_changes_that_share_of_answers_at_a_rotation() -> None:
    bodies = [CHAT | {"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(200)]
    async with sim(drift=0.3) as client:
        before = [await chat_text(client, body) for body in bodies]
        await client.post("/_sim/fingerprint", json={"fingerprint": "fp_next"})
        after = [await chat_text(client, body) for body in bodies]
        changed = sum(old != new for old, new in zip(before, after, strict=True))
        assert 40 <= changed <= 80  # 60 expected; the draw is fixed per body, so is this count
        assert [await chat_text(client, body) for body in bodies] == after
        resp = await client.post("/_sim/settings", json={"drift": 1.5})
        assert resp.status == 400


async def test_unseeded_answers_vary() -> None:
    async with sim() as client:
        unseeded = {k: v for k, v in CHAT.items() if k != "seed"}
        texts = {await chat_text(client, unseeded) for _ in range(3)}
        assert len(texts) == 3


async def test_full_divergence_breaks_seeded_determinism() -> None:
    async with sim(divergence=1.0) as client:
        texts = {await chat_text(client, CHAT) for _ in range(3)}
        assert len(texts) == 3


async def test_n_and_max_tokens() -> None:
    async with sim() as client:
        answer = await post(client, "/v1/chat/completions", CHAT | {"n": 3, "max_tokens": 5})
        assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
        for choice in answer["choices"]:
            assert len(choice["message"]["content"].split()) == 5
            assert choice["finish_reason"] == "length"
        assert answer["usage"]["completion_tokens"] == 15
        capped = await post(client, "/v1/chat/completions", CHAT | {"max_completion_tokens": 2})
        assert capped["choices"][0]["finish_reason"] == "length"
        resp = await client.post("/v1/chat/completions", json=CHAT | {"n": 0}, headers=AUTH)
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "n"


async def test_forced_tool_call() -> None:
    async with sim() as client:
        body = CHAT | {"tools": [WEATHER_TOOL], "tool_choice": "required"}
        (choice,) = (await post(client, "/v1/chat/completions", body))["choices"]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        (call,) = choice["message"]["tool_calls"]
        assert call["id"].startswith("call_")
        assert call["type"] == "function"
        assert call["function"]["name"] == "get_weather"
        arguments = orjson.loads(call["function"]["arguments"])
        assert isinstance(arguments["city"], str)
        assert isinstance(arguments["days"], int)
        named = {"type": "function", "function": {"name": "get_weather"}}
        answer = await post(client, "/v1/chat/completions", body | {"tool_choice": named})
        assert answer["choices"][0]["finish_reason"] == "tool_calls"
        auto = await post(client, "/v1/chat/completions", body | {"tool_choice": "auto"})
        assert auto["choices"][0]["message"]["content"]


async def test_chunks_are_flushed_as_produced() -> None:
    async with sim(chunk_delay=0.05) as client:
        started = time.monotonic()
        body = CHAT | {"stream": True, "max_tokens": 5}
        resp = await client.post("/v1/chat/completions", json=body, headers=AUTH)
        await resp.content.readline()
        first_chunk = time.monotonic() - started
        await resp.read()
        assert first_chunk < 0.15 < time.monotonic() - started


async def test_chat_stream_frames_match_the_plain_answer() -> None:
    async with sim() as client:
        body = CHAT | {"stream_options": {"include_usage": True}}
        frames = await stream_frames(client, "/v1/chat/completions", body)
        assert frames[-1] == "[DONE]"
        chunks = [orjson.loads(f) for f in frames[:-1]]
        assert len({(c["id"], c["created"], c["system_fingerprint"]) for c in chunks}) == 1
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert all(c["usage"] is None for c in chunks[:-1])
        finish = chunks[-2]["choices"][0]
        assert (finish["delta"], finish["finish_reason"]) == ({}, "stop")
        assert chunks[-1]["choices"] == []
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
        plain = await post(client, "/v1/chat/completions", CHAT)
        assert text == plain["choices"][0]["message"]["content"]
        assert chunks[-1]["usage"] == plain["usage"]
        assert frames[1] == orjson.dumps(chunks[1]).decode()


async def test_stream_without_usage_has_no_usage_key() -> None:
    async with sim() as client:
        frames = await stream_frames(client, "/v1/chat/completions", CHAT | {"n": 2})
        chunks = [orjson.loads(f) for f in frames[:-1]]
        assert all("usage" not in c for c in chunks)
        assert {c["choices"][0]["index"] for c in chunks} == {0, 1}


async def test_text_completion_stream() -> None:
    async with sim() as client:
        body = {"model": "gpt-3.5-turbo-instruct", "prompt": "Once", "seed": 2}
        frames = await stream_frames(client, "/v1/completions", body)
        chunks = [orjson.loads(f) for f in frames[:-1]]
        assert {c["object"] for c in chunks} == {"text_completion"}
        text = "".join(c["choices"][0]["text"] for c in chunks)
        plain = await post(client, "/v1/completions", body)
        assert text == plain["choices"][0]["text"]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_tool_call_stream_builds_the_arguments() -> None:
    async with sim() as client:
        body = CHAT | {"tools": [WEATHER_TOOL], "tool_choice": "required"}
        frames = await stream_frames(client, "/v1/chat/completions", body)
        deltas = [orjson.loads(f)["choices"][0]["delta"] for f in frames[:-1]]
        first = deltas[0]["tool_calls"][0]
        assert first["id"].startswith("call_")
        assert first["function"] == {"name": "get_weather", "arguments": ""}
        fragments = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:-1]]
        assert set(orjson.loads("".join(fragments))) == {"city", "days"}


async def test_status_fault_applies_count_times_with_headers() -> None:
    async with sim() as client:
        await add_fault(client, kind="status", status=429, count=2, headers={"retry-after": "2"})
        for _ in range(2):
            resp = await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
            assert resp.status == 429
            assert resp.headers["retry-after"] == "2"
            assert "error" in await resp.json()
        await post(client, "/v1/chat/completions", CHAT)


async def test_status_fault_with_custom_body_and_clearing() -> None:
    async with sim() as client:
        await add_fault(client, kind="status", status=503, body={"oops": True})
        resp = await client.post("/v1/embeddings", json={"input": "x"}, headers=AUTH)
        assert (resp.status, await resp.json()) == (503, {"oops": True})
        await add_fault(client, kind="status", status=500)
        await client.delete("/_sim/faults")
        await post(client, "/v1/embeddings", {"input": "x"})
        resp = await client.post("/_sim/faults", json={"kind": "explode"})
        assert resp.status == 400


async def test_cut_fault_ends_a_stream_without_done() -> None:
    async with sim() as client:
        await add_fault(client, kind="cut", after=3)
        resp = await client.post("/v1/chat/completions", json=CHAT | {"stream": True}, headers=AUTH)
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_cut_fault_truncates_a_plain_answer() -> None:
    async with sim() as client:
        await add_fault(client, kind="cut")
        resp = await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_error_event_fault() -> None:
    async with sim() as client:
        await add_fault(client, kind="error_event", after=1)
        frames = await stream_frames(client, "/v1/chat/completions", CHAT)
        assert len(frames) == 2
        assert orjson.loads(frames[1])["error"]["type"] == "server_error"


async def test_drop_fault_closes_without_answer() -> None:
    async with sim() as client:
        await add_fault(client, kind="drop")
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)


async def test_hang_fault_never_answers() -> None:
    async with sim() as client:
        await add_fault(client, kind="hang")
        timeout = aiohttp.ClientTimeout(total=0.2)
        with pytest.raises(TimeoutError):
            await client.post("/v1/embeddings", json={"input": "x"}, headers=AUTH, timeout=timeout)


async def test_requests_are_recorded_raw() -> None:
    async with sim() as client:
        raw = b'{"seed":12345,"model":"m","messages":[]}'
        headers = AUTH | {"X-Custom": "yes", "Content-Type": "application/json"}
        await client.post("/v1/chat/completions?a=1", data=raw, headers=headers)
        await client.post("/v1/files", data=b"\xff\xfe", headers=AUTH)
        first, second = await (await client.get("/_sim/requests")).json()
        assert (first["method"], first["query"]) == ("POST", "a=1")
        assert first["path"] == "/v1/chat/completions"
        assert first["headers"]["X-Custom"] == "yes"
        assert first["headers"]["Authorization"] == "Bearer sk-test"
        assert (first["body"], first["body_base64"]) == (raw.decode(), False)
        assert base64.b64decode(second["body"]) == b"\xff\xfe"
        assert second["body_base64"] is True
        await client.delete("/_sim/requests")
        assert await (await client.get("/_sim/requests")).json() == []


async def test_settings_route_changes_latency() -> None:
    async with sim() as client:
        resp = await client.post("/_sim/settings", json={"latency": 0.2, "divergence": 0.5})
        assert await resp.json() == {
            "latency": 0.2,
            "chunk_delay": 0.0,
            "divergence": 0.5,
            "drift": 1.0,
        }
        started = time.monotonic()
        await post(client, "/v1/chat/completions", CHAT)
        assert time.monotonic() - started >= 0.2
        resp = await client.post("/_sim/settings", json={"latency": 0, "divergence": 2})
        assert resp.status == 400
        assert (await (await client.get("/_sim/settings")).json())["latency"] == 0.2


async def test_settings_route_refuses_a_wait_beyond_ten_years() -> None:
    async with sim() as client:
        for body in ({"latency": 1e300}, {"chunk_delay": 315360001}):
            resp = await client.post("/_sim/settings", json=body)
            assert resp.status == 400
            assert "from 0 to 315360000" in (await resp.text())
        assert (await (await client.get("/_sim/settings")).json())["latency"] == 0.0


async def test_a_status_fault_takes_the_latency_of_an_answer() -> None:
    """A test that races requests against a failing upstream needs the failure to take time."""
    async with sim() as client:
        await client.post("/_sim/settings", json={"latency": 0.2})
        await add_fault(client, kind="status", status=503)
        started = time.monotonic()
        resp = await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert resp.status == 503
        assert time.monotonic() - started >= 0.2


async def test_stats_count_completed_and_cancelled_streams() -> None:
    async with sim() as client:
        await stream_frames(client, "/v1/chat/completions", CHAT)
        await client.post("/_sim/settings", json={"chunk_delay": 0.05})
        resp = await client.post("/v1/chat/completions", json=CHAT | {"stream": True}, headers=AUTH)
        await resp.content.readline()
        resp.close()
        for _ in range(50):
            stats = await (await client.get("/_sim/stats")).json()
            if stats["streams_cancelled"]:
                break
            await asyncio.sleep(0.02)
        assert stats == {
            "requests": {"/v1/chat/completions": 2},
            "streams_completed": 1,
            "streams_cancelled": 1,
            "realtime_closes": [],
        }


def test_settings_from_args() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = ["--fingerprint", "null", "--api-key", "a", "--api-key", "b", "--chunk-delay", "0.1"]
    settings = settings_from_args(parser.parse_args(args))
    assert settings == SimSettings(fingerprint=None, api_keys=("a", "b"), chunk_delay=0.1)
    assert settings_from_args(parser.parse_args([])) == SimSettings()
    for flag in ("--divergence", "--drift"):
        with pytest.raises(SystemExit):  # argparse's one line naming the flag, status 2
            parser.parse_args([flag, "1.5"])
    alternating = settings_from_args(parser.parse_args(["--fingerprints", "fp_a,fp_b"]))
    assert alternating.fingerprints == ("fp_a", "fp_b")


async def test_cli_runs_the_simulator_and_stops_on_sigterm() -> None:
    port = free_port()
    command = [sys.executable, "-m", "proxy", "sim", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    resp = await session.get(f"http://127.0.0.1:{port}/v1/models", headers=AUTH)
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            assert resp.status == 200
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=5)
    assert process.returncode == 0
    assert f"repro-proxy sim: listening on http://127.0.0.1:{port}" in stderr.decode()


async def test_a_client_inventing_paths_or_posting_big_bodies_is_held_in_bounded_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the simulator keeps of its clients (counts per path, recorded requests, queued
    faults) stays bounded, whatever they send: it may serve a load test or a shared demo."""
    from proxy.tools.sim import state

    monkeypatch.setattr(state, "MAX_COUNTED", 8)
    monkeypatch.setattr(state, "RECORD_BYTES", 1024 * 1024)
    monkeypatch.setattr(state, "MAX_FAULTS", 3)
    async with sim() as client:
        for n in range(20):
            await client.get(f"/v1/invented/{n}", headers=AUTH)
        counted = (await (await client.get("/_sim/stats")).json())["requests"]
        assert len(counted) == 9 and counted["other"] == 12
        big = {"model": "gpt-4o-mini", "input": "x" * 300_000}
        for _ in range(6):
            await client.post("/v1/embeddings", json=big, headers=AUTH)
        kept = await (await client.get("/_sim/requests")).json()
        assert 0 < sum(len(r["body"]) for r in kept) <= 1024 * 1024 and len(kept) == 3
        for n in range(4):
            resp = await client.post("/_sim/faults", json={"kind": "status", "count": 1})
            assert resp.status == (200 if n < 3 else 400)


async def test_an_embeddings_request_asks_for_at_most_2048_vectors() -> None:
    """Each input costs a vector: millions of empty strings in a 64 MiB body would ask for
    billions of floats. OpenAI refuses more than 2048 inputs, and so does the simulator."""
    async with sim() as client:
        body = {"model": "text-embedding-3-small", "dimensions": 1}
        resp = await client.post("/v1/embeddings", json=body | {"input": [""] * 2049}, headers=AUTH)
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "input"
        answer = await post(client, "/v1/embeddings", body | {"input": ["a"] * 2048})
        assert len(answer["data"]) == 2048


async def test_a_control_body_is_small() -> None:
    """Queued faults keep their bodies: a control request may not hold megabytes."""
    async with sim() as client:
        fault = {"kind": "status", "body": "x" * 70_000}
        resp = await client.post("/_sim/faults", json=fault)
        assert resp.status == 400
        assert (await (await client.get("/_sim/stats")).json())["requests"] == {}
        small = await client.post("/_sim/faults", json=fault | {"body": "x" * 1000})
        assert small.status == 200
