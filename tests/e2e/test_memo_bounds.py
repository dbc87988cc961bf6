"""The hot path's memos stay small and flat. The decoded-entry memo holds one decoding per stored
slot, bounded by the store it serves, so a small store's evicted answers do not stay resident after
the store dropped them. The prepared-call memo holds only requests that a HIT answered: a MISS is
usually a one-off."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import struct
import tracemalloc
from collections.abc import AsyncIterator

import orjson
import pytest
import zstandard
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Settings
from proxy.core.call import Asked, Call, prepare_with
from proxy.core.codec import Codec
from proxy.core.entry import CorruptEntry, Entry
from proxy.core.policy import CacheScope
from proxy.server.app import create_app
from proxy.server.caching import decoded
from proxy.server.context import ENTRY_MEMO_BYTES, SERVICES, Services, entry_memo
from tests.fixtures_procs import Sim
from tests.hostile import Received, Scripted, http_answer

CODEC = Codec()
UNUSED = "http://127.0.0.1:9"  # no request reaches the upstream here


CHAT = prepare_with(
    Settings(),
    "t",
    Asked.of("/v1/chat/completions", "", b'{"model": "m"}', CIMultiDictProxy(CIMultiDict())),
)


def call(key: str) -> Call:
    """A chat request whose key is `key`: what `decoded` checks an entry against."""
    return CHAT._replace(key=key)


def answer(number: int, stored_at: float = 0.0) -> tuple[bytes, Entry]:
    text = random.Random(number).randbytes(400).hex()  # random: the memo is bound by both sizes
    body = orjson.dumps({"choices": [{"index": 0, "message": {"content": text}}]})
    entry = Entry(body, "application/json", "fp_1", stored_at, "m", seed=number)
    return CODEC.pack(entry), entry


def test_the_memo_holds_at_most_twice_what_the_store_keeps() -> None:
    memo = entry_memo(local_bytes=10_000)
    blobs = [answer(number) for number in range(40)]
    for number, (blob, _) in enumerate(blobs):
        decoded(CODEC, memo, call(f"key{number}"), "fp_1", blob)
    assert memo.bytes <= 20_000
    assert 0 < len(memo) < 40
    assert memo.get(("key0", "fp_1")) is None  # the oldest answers went first
    assert memo.get(("key39", "fp_1")) == (*blobs[-1], None)


def test_an_answer_written_again_replaces_its_decoding() -> None:
    """A small store evicts and fills the same request again and again: each fill is a new
    blob, and the memo must hold one decoding per slot, never a pile of dead ones."""
    memo = entry_memo()
    for second in range(100):
        blob, entry = answer(7, stored_at=float(second))
        assert decoded(CODEC, memo, call("key"), "fp_1", blob) == entry
    assert len(memo) == 1
    assert memo.bytes == len(blob) + len(entry.body) + len(entry.request)


def test_a_changed_blob_is_decoded_again_and_an_equal_one_is_not() -> None:
    memo = entry_memo()
    old, _ = answer(1, stored_at=1.0)
    first = decoded(CODEC, memo, call("key"), "fp_1", old)
    assert (
        decoded(CODEC, memo, call("key"), "fp_1", bytes(old)) is first
    )  # equal bytes (Redis): remembered
    new, entry = answer(1, stored_at=2.0)
    assert decoded(CODEC, memo, call("key"), "fp_1", new) == entry
    assert decoded(CODEC, memo, call("key"), "fp_1", new).stored_at == 2.0
    assert (
        decoded(CODEC, memo, call("key"), "fp_2", old) is not first
    )  # another slot, its own decoding


def test_without_a_local_store_the_memo_keeps_its_own_bound() -> None:
    assert entry_memo().max_bytes == ENTRY_MEMO_BYTES
    assert entry_memo(local_bytes=1 << 40).max_bytes == ENTRY_MEMO_BYTES


@contextlib.asynccontextmanager
async def services(settings: Settings) -> AsyncIterator[Services]:
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    try:
        yield runner.app[SERVICES]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("store", "budget"),
    [
        ("memory://?max_bytes=1MiB", 2 * 1024 * 1024),
        ("memory://", ENTRY_MEMO_BYTES),  # the default 256 MiB store: the memo's own bound
    ],
)
async def test_the_app_bounds_the_memo_by_its_memory_store(store: str, budget: int) -> None:
    async with services(Settings(store=store, upstream=UNUSED)) as built:
        assert built.entries.max_bytes == budget


async def test_the_app_bounds_the_memo_by_its_near_cache(redis_url: str) -> None:
    settings = Settings(store=redis_url, upstream=UNUSED, near_cache=4 * 1024 * 1024)
    async with services(settings) as built:
        assert built.entries.max_bytes == 8 * 1024 * 1024


def chat(text: str) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


async def test_the_call_memo_keeps_only_the_requests_a_hit_answered(sim: Sim) -> None:
    app = create_app(Settings(upstream=sim.v1))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        calls = app[SERVICES].calls

        async def cache_of(body: dict[str, object], **headers: str) -> tuple[str, str]:
            headers["Authorization"] = "Bearer sk-test"
            response = await client.post("/v1/chat/completions", json=body, headers=headers)
            assert response.status == 200
            await response.read()
            return response.headers["X-Repro-Cache"], response.headers["X-Repro-Key"]

        first, key = await cache_of(chat("one"))
        assert (first, len(calls)) == ("MISS", 0)
        assert await cache_of(chat("one")) == ("HIT", key)
        assert len(calls) == 1
        assert await cache_of(chat("one")) == ("HIT", key)  # the remembered call
        assert len(calls) == 1
        assert (await cache_of(chat("two")))[0] == "MISS"
        assert (await cache_of(chat("three"), **{"Cache-Control": "no-store"}))[0] == "BYPASS"
        assert len(calls) == 1
    assert len(sim.llm_requests()) == 3


async def test_the_call_memo_charges_a_remembered_call_for_its_credentials_too(sim: Sim) -> None:
    """A request's credentials are part of what the memo keeps: up to 128 headers of 8 KiB
    each, which a permissive upstream accepts. Were only the bodies charged, 4096 remembered
    HITs of such requests would hold gigabytes under a 16 MiB bound."""
    app = create_app(Settings(upstream=sim.v1))
    many = [("Authorization", "Bearer sk-test")]
    many += [(f"x-api-key-{n:03d}", "k" * 8000) for n in range(40)]  # 40 headers, one line each
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for expected in ("MISS", "HIT"):
            response = await client.post("/v1/chat/completions", json=chat("big"), headers=many)
            assert response.headers["X-Repro-Cache"] == expected
            await response.read()
        calls = app[SERVICES].calls
        assert len(calls) == 1
        assert calls.bytes >= 40 * 8000


async def test_the_tenant_memo_is_bounded_by_bytes_for_callers_without_a_key(sim: Sim) -> None:
    """Every request's credentials are hashed and the HMAC remembered, a refused caller's too:
    kept by count alone, 4096 requests of 128 headers of 8 KiB would hold 4 GiB."""
    sim.accept_keys("sk-good")
    app = create_app(Settings(upstream=sim.v1))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for caller in range(8):
            headers = [(f"x-api-key-{n:03d}", f"{caller}-" + "k" * 8000) for n in range(40)]
            response = await client.post("/v1/chat/completions", json=chat("x"), headers=headers)
            assert response.status == 401
            await response.read()
        tenants = app[SERVICES].secret.tenants
        assert tenants.bytes <= tenants.max_bytes <= 1 << 20
        assert len(tenants) < 8


HUGE_MODELS = 16
MODEL_BYTES = 512 * 1024  # a body under 1 MiB: one the client sends without a warning


async def retained_by_huge_models(app: web.Application, key: str) -> int:
    """Bytes still allocated after `HUGE_MODELS` requests, each naming a model of 512 KiB with
    a new key made from `key` (which the upstream refuses), once the requests are gone."""
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        warm = await client.post("/v1/chat/completions", json=chat("w"), headers={"api-key": key})
        await warm.read()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for number in range(HUGE_MODELS):
                body = {**chat("x"), "model": f"{number:02d}" + "m" * MODEL_BYTES}
                made_up = {"api-key": f"{key}-{number}"}  # each one new: nothing known of it
                answer = await client.post("/v1/chat/completions", json=body, headers=made_up)
                assert answer.status == 401
                await answer.read()
            del body, answer
            gc.collect()
            return tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()


async def test_model_names_a_caller_makes_up_are_not_kept_by_the_redis_store(
    sim: Sim, redis_url: str
) -> None:
    """Each lookup names its model's key, remembered for the next: a model name is the
    client's, as long as the body allows, and a refused caller's lookups count too."""
    sim.accept_keys("sk-good")
    app = create_app(Settings(store=redis_url, upstream=sim.v1))
    assert await retained_by_huge_models(app, "sk-made-up") < HUGE_MODELS * MODEL_BYTES // 4


async def test_model_names_a_caller_makes_up_are_not_kept_by_the_key_checker() -> None:
    """Shared scope, and an upstream listing its models to anyone: the key checker learns
    whether this request is served to made-up credentials, per route and model."""
    with Scripted(models_public_chat_refused) as upstream:
        app = create_app(Settings(upstream=upstream.v1, cache_scope=CacheScope.SHARED))
        assert await retained_by_huge_models(app, "sk-made-up") < HUGE_MODELS * MODEL_BYTES // 4


async def models_public_chat_refused(writer: asyncio.StreamWriter, request: Received) -> None:
    request.body = b""  # recorded requests live in this process, beside the proxy measured
    if request.request_line.startswith("GET /v1/models"):
        answer = http_answer(b'{"object":"list","data":[]}', "Content-Type: application/json")
    else:
        error = (
            b'{"error":{"message":"no","type":"invalid_request_error","code":"invalid_api_key"}}'
        )
        answer = http_answer(error, "Content-Type: application/json", status="401 Unauthorized")
    writer.write(answer)
    await writer.drain()


class Counting(Codec):
    def __init__(self) -> None:
        super().__init__(max_raw=48 << 20)
        self.unpacked = 0

    def unpack(self, blob: bytes) -> Entry:
        self.unpacked += 1
        return super().unpack(blob)


def test_a_value_that_is_no_entry_is_decompressed_once_while_it_stays() -> None:
    """A few KiB in the store may claim tens of MiB that are no entry: decompressed on every
    request for its key, it held the event loop tens of milliseconds each time."""
    codec, memo = Counting(), entry_memo()
    frame = zstandard.ZstdCompressor(level=19).compress(bytes(48 << 20))
    bomb = struct.pack(">BBI", 2, 1, 48 << 20) + frame
    assert len(bomb) < 4096
    for _ in range(3):
        with pytest.raises(CorruptEntry):
            decoded(codec, memo, call("key"), "fp_1", bytes(bomb))
    assert codec.unpacked == 1
    fixed, entry = answer(7)
    assert decoded(codec, memo, call("key"), "fp_1", fixed) == entry  # written over: read again
    with pytest.raises(CorruptEntry):
        decoded(codec, memo, call("key"), "fp_2", bomb)  # another slot is its own
    assert codec.unpacked == 3
