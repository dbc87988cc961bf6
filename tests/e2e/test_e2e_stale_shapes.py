"""Stored answers a client cannot read are never served, even when an older proxy wrote them.

Before a whole answer's shape was checked at write, a chat choice without its message, a
completion without its text or an embedding without its vector was stored, and every later
caller got it as a HIT, on which the official SDK fails, for as long as the entry lived. Such
an entry is written here as an older proxy would have (the store API into the memory store and
a real redis-server, a cassette line recorded then), and real clients (the SDK, raw aiohttp for
the headers) must get a MISS the upstream (`repro-proxy sim`) answers, then a good HIT; in
replay mode a 504 cache_miss, and the log line saying why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from openai import APIStatusError, AsyncOpenAI, OpenAI

from proxy.config import Settings
from proxy.core.codec import Codec
from proxy.core.entry import Entry
from proxy.server.app import create_app
from proxy.server.context import SERVICES
from proxy.store import open_store
from proxy.store.base import Labels, Write
from tests.e2e.test_e2e_replay import stop
from tests.fixtures_procs import ProxyFactory, Sim, closed_after_test

MODEL = "gpt-4o-mini"
KEY = "sk-stale"
PROMPT = "Which rivers cross Paris?"
DROPPED = "stored answer dropped"


def sdk(url: str, ns: str) -> OpenAI:
    headers = {"X-Repro-Namespace": ns}
    made = OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=10, default_headers=headers)
    return closed_after_test(made)


def chat_body(content: str) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}]}


def older_entry(route: str, request: dict[str, Any], answer: dict[str, Any], fp: str) -> Entry:
    """An entry as a proxy that did not check shapes stored it."""
    return Entry(
        body=orjson.dumps(answer),
        content_type="application/json",
        fingerprint=fp,
        stored_at=time.time(),
        model=MODEL,
        route=route,
        request=orjson.dumps(request),
    )


def written(key: str, entry: Entry, ns: str) -> Write:
    labels = Labels(namespace=ns, model=MODEL)
    return Write(key, entry.fingerprint, Codec(level=0).pack(entry), 0, labels)


async def older_proxy_writes(redis_url: str, key: str, entry: Entry, ns: str) -> None:
    """Put `entry` into Redis through the store API, announcing it as every proxy does."""
    store = await open_store(redis_url)
    try:
        await store.put(written(key, entry, ns))
    finally:
        await store.close()


def key_of(asking: Callable[..., Any]) -> str:
    """The key a request names, asked `only-if-cached`: a 504 that stores nothing."""
    with pytest.raises(APIStatusError) as missed:
        asking(extra_headers={"Cache-Control": "only-if-cached"})
    assert missed.value.status_code == 504
    return str(missed.value.response.headers["X-Repro-Key"])


# Each route: how the SDK asks, what the answer lacks as an older proxy stored it, and what the
# SDK reads of a good one.
Ask = Callable[[OpenAI, str], Callable[..., Any]]


def _chat(client: OpenAI, text: str) -> Callable[..., Any]:
    return lambda **extra: client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": text}], **extra
    )


def _completions(client: OpenAI, text: str) -> Callable[..., Any]:
    return lambda **extra: client.completions.with_raw_response.create(
        model=MODEL, prompt=text, **extra
    )


def _embeddings(client: OpenAI, text: str) -> Callable[..., Any]:
    return lambda **extra: client.embeddings.with_raw_response.create(
        model=MODEL, input=text, **extra
    )


def _no_message(answer: dict[str, Any]) -> None:
    answer["choices"][0]["message"] = None


def _no_text(answer: dict[str, Any]) -> None:
    del answer["choices"][0]["text"]


def _no_vector(answer: dict[str, Any]) -> None:
    answer["data"][0]["embedding"] = None


def _read_chat(parsed: Any) -> object:
    return parsed.choices[0].message.content


def _read_text(parsed: Any) -> object:
    return parsed.choices[0].text


def _read_vector(parsed: Any) -> object:
    return parsed.data[0].embedding[:2]


ROUTES = {
    "chat": ("/v1/chat/completions", _chat, _no_message, _read_chat),
    "completions": ("/v1/completions", _completions, _no_text, _read_text),
    "embeddings": ("/v1/embeddings", _embeddings, _no_vector, _read_vector),
}


@pytest.mark.parametrize("name", list(ROUTES))
def test_an_older_proxys_entry_in_redis_is_a_miss_and_the_upstream_replaces_it(
    start_proxy: ProxyFactory, redis_url: str, sim: Sim, ns: str, name: str
) -> None:
    """Two proxies of different versions share one Redis: the older one stored an answer the
    SDK cannot read. The newer one (near-cache on, its default) asks the upstream instead, and
    its answer is every later caller's HIT."""
    route, ask, spoil, read = ROUTES[name]
    proxy = start_proxy("--store", redis_url)
    client = sdk(proxy.v1, ns)
    warm = ask(client, "Teach the model's fingerprint.")()  # the model's state, as any proxy's
    assert warm.headers["X-Repro-Cache"] == "MISS"
    answer = orjson.loads(warm.content)
    spoil(answer)
    key = key_of(ask(client, PROMPT))
    entry = older_entry(route, {"model": MODEL}, answer, warm.headers["X-Repro-Fingerprint"])
    asyncio.run(older_proxy_writes(redis_url, key, entry, ns))
    first = ask(client, PROMPT)()
    assert (first.headers["X-Repro-Cache"], first.headers["X-Repro-Key"]) == ("MISS", key)
    assert read(first.parse())  # what the SDK failed on, had the stored answer been served
    again = ask(client, PROMPT)()
    assert again.headers["X-Repro-Cache"] == "HIT"
    assert read(again.parse()) == read(first.parse())
    asked = [r for r in sim.llm_requests() if r["path"] == route]
    assert len(asked) == 2  # the warm-up, and the answer that replaced the older entry
    assert proxy.store_errors().get("unreadable", 0) >= 1


async def test_the_memory_store_drops_it_for_hits_and_stale_answers_and_logs_once(
    sim: Sim, caplog: pytest.LogCaptureFixture
) -> None:
    """The memory store, through the store API: neither a HIT nor a stale-if-error answer
    serves the entry; it is logged once per key at warning (route, model, key, never the
    prompt), however often it is written again."""
    app = create_app(Settings(upstream=sim.v1))
    auth = {"Authorization": f"Bearer {KEY}"}
    caplog.set_level(logging.WARNING, logger="proxy.cache")
    async with TestClient(TestServer(app, host="127.0.0.1")) as raw:
        store = app[SERVICES].store

        async def post(body: dict[str, Any], **headers: str) -> tuple[int, Any, dict[str, Any]]:
            response = await raw.post("/v1/chat/completions", json=body, headers=auth | headers)
            return response.status, response.headers, await response.json()

        status, warm, answer = await post(chat_body("Teach the model's fingerprint."))
        assert (status, warm["X-Repro-Cache"]) == (200, "MISS")
        _no_message(answer)
        status, missed, _ = await post(chat_body(PROMPT), **{"Cache-Control": "only-if-cached"})
        key, fp = missed["X-Repro-Key"], warm["X-Repro-Fingerprint"]
        bad = older_entry("/v1/chat/completions", chat_body(PROMPT), answer, fp)
        await store.put(written(key, bad, ""))

        sim.fault(kind="status", status=503)
        stale = {"Cache-Control": "no-cache, stale-if-error=600"}
        status, headers, _ = await post(chat_body(PROMPT), **stale)
        assert (status, headers.get("X-Repro-Cache")) == (503, "REFRESH")  # no STALE stand-in

        client = AsyncOpenAI(base_url=str(raw.make_url("/v1")), api_key=KEY, max_retries=0)
        async with client:
            for expected in ("MISS", "HIT"):
                got = await client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=[{"role": "user", "content": PROMPT}]
                )
                assert got.headers["X-Repro-Cache"] == expected
                assert got.parse().choices[0].message.content
            del answer["choices"][0]["message"]  # written again, spoilt otherwise
            await store.put(written(key, bad._replace(body=orjson.dumps(answer)), ""))
            status, headers, _ = await post(chat_body(PROMPT))
            assert (status, headers["X-Repro-Cache"]) == (200, "MISS")
    warnings = [r for r in caplog.records if r.getMessage().startswith(DROPPED)]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    (dropped,) = warnings
    assert (dropped.key, dropped.route, dropped.model) == (key, "/v1/chat/completions", MODEL)  # type: ignore[attr-defined]
    assert PROMPT not in str(vars(dropped))
    assert len(sim.llm_requests()) == 4  # warm-up, the stale attempt, two MISSes


def record_then_spoil(
    start_proxy: ProxyFactory, tape: Path, ns: str, ask: Callable[[OpenAI], Any], spoil: Any
) -> Any:
    """Record one answer into a cassette, then rewrite its body as an older proxy recorded it."""
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    recorded = ask(sdk(recorder.v1, ns))
    stop(recorder)
    (line,) = tape.read_bytes().splitlines()
    record = orjson.loads(line)
    answer = orjson.loads(record["body"])
    spoil(answer)
    record["body"] = orjson.dumps(answer).decode()
    tape.write_bytes(orjson.dumps(record) + b"\n")
    return recorded


def test_replay_of_an_older_cassettes_misshapen_answer_is_a_cache_miss_saying_why(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path, ns: str
) -> None:
    tape, log = tmp_path / "llm.jsonl", tmp_path / "replay.log"

    def ask(client: OpenAI) -> Any:
        return client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}]
        )

    key = record_then_spoil(start_proxy, tape, ns, ask, _no_message).headers["X-Repro-Key"]
    sim.reset()
    with log.open("wb") as stderr:
        replayer = start_proxy(
            "--cache-scope", "shared", "--cassette", str(tape), "--cache-mode", "replay",
            stderr=stderr,
        )  # fmt: skip
        client = sdk(replayer.v1, ns)
        for _ in range(2):
            with pytest.raises(APIStatusError) as missed:
                ask(client)
            assert missed.value.status_code == 504
            assert missed.value.response.json()["error"]["code"] == "cache_miss"
        stop(replayer)
    assert sim.llm_requests() == []
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines() if line.startswith(b"{")]
    dropped = [line for line in lines if line["msg"].startswith(DROPPED)]
    assert len(dropped) == 1, lines
    assert dropped[0]["level"] == "warning" and "replay" in dropped[0]["msg"]
    assert (dropped[0]["key"], dropped[0]["model"]) == (key, MODEL)
    assert PROMPT not in log.read_text()


def test_a_response_an_older_proxy_stored_incomplete_is_not_replayed_nor_fetched_by_id(
    start_proxy: ProxyFactory, redis_url: str, ns: str
) -> None:
    """A Responses answer that is not `completed` is no answer a retry would get: in replay,
    neither a fetch of its id nor the request that made it is answered with it."""
    shared = ("--store", redis_url, "--secret", "s3cret-of-16-bytes")
    recorder = start_proxy(*shared)
    made = sdk(recorder.v1, ns).responses.with_raw_response.create(model=MODEL, input=PROMPT)
    answer = orjson.loads(made.content)
    answer["status"] = "incomplete"
    entry = older_entry(
        "/v1/responses", {"model": MODEL}, answer, made.headers["X-Repro-Fingerprint"]
    )
    asyncio.run(older_proxy_writes(redis_url, made.headers["X-Repro-Key"], entry, ns))
    client = sdk(start_proxy(*shared, "--cache-mode", "replay").v1, ns)
    asked = (
        lambda: client.responses.retrieve(answer["id"]),
        lambda: client.responses.create(model=MODEL, input=PROMPT),
    )
    for asking in asked:
        with pytest.raises(APIStatusError) as missed:
            asking()
        assert missed.value.status_code == 504
        assert missed.value.response.json()["error"]["code"] == "cache_miss"
