"""A hostile tenant against the key checker's logic, with a scripted upstream in the process."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, cast

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Settings
from proxy.core.call import Asked, Call, prepare_with
from proxy.core.credentials import of_request, scope
from proxy.core.policy import CacheScope
from proxy.server.coalesce import Coalescer
from proxy.server.keycheck import KeyChecker
from proxy.store.memory import MemoryStore
from proxy.upstream.client import Upstream

SECRET = b"0123456789abcdef0123456789abcdef"
ANSWER = orjson.dumps(
    {
        "object": "chat.completion",
        "system_fingerprint": "fp_gateway",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    }
)


class FreeModelGateway:
    """A public model list; `free-local` served to anyone, any other model to nobody it
    knows. A made-up key's question about `free-local` waits for `release`."""

    def __init__(self) -> None:
        self.asked_free = asyncio.Event()
        self.release = asyncio.Event()

    async def send(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None, **_: bool
    ) -> Answered:
        if method == "GET":
            return Answered(200, b'{"object": "list", "data": []}')
        if orjson.loads(body or b"{}").get("model") == "free-local":
            self.asked_free.set()
            await self.release.wait()
            return Answered(200, ANSWER)
        return Answered(401, b'{"error": {"message": "Incorrect API key provided."}}')


@dataclass
class Answered:
    """An upstream answer as the key checker reads it."""

    status: int
    body: bytes
    headers: ClassVar[dict[str, str]] = {"Content-Type": "application/json"}

    async def read(self, limit: int) -> bytes:
        return self.body

    def release(self) -> None:
        pass


def _call(model: str) -> tuple[Call, CIMultiDictProxy[str]]:
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer sk-mallory"}))
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "q"}]})
    asked = Asked.of("/v1/chat/completions", "", body, headers)
    tenant = scope(of_request(headers, ""), SECRET)
    return prepare_with(Settings(cache_scope=CacheScope.SHARED), tenant, asked), headers


async def test_a_key_check_for_one_question_is_no_answer_for_another_asked_meanwhile() -> None:
    """Concurrent checks of one tenant share an upstream call only when they ask the same: a
    made-up key whose free model's check was in flight read, through it, the paid model's
    stored answers (the upstream refuses it those)."""
    gateway = FreeModelGateway()
    checker = KeyChecker(cast(Upstream, gateway), 300, lambda: 0.0, timeout=10, shared=True)
    free, headers = _call("free-local")
    paid, _ = _call("gpt-4o-mini")
    assert free.tenant == paid.tenant
    first = asyncio.create_task(checker.accepted(free, headers))
    async with asyncio.timeout(10):
        await gateway.asked_free.wait()
    second = asyncio.create_task(checker.accepted(paid, headers))
    gateway.release.set()
    async with asyncio.timeout(10):
        assert await first is True
        assert await second is False
    assert checker.known(paid) is False
    await checker.close()


async def test_a_hung_leader_holds_identical_requests_only_until_its_own_deadline() -> None:
    """A fill that hangs (its upstream call lasts up to --upstream-timeout) held every
    identical request that came later for a whole lock timeout of its own, and none of them
    could lead and store: past the leader's deadline a request neither waits nor follows."""
    now = [0.0]
    coalescer = Coalescer(MemoryStore(), 30.0, clock=lambda: now[0])
    hung = coalescer.claim("k")
    assert hung is not None
    now[0] = 10.0
    assert coalescer.claim("k") is None  # within the deadline: one fill at a time
    now[0] = 31.0
    async with asyncio.timeout(5):  # the lock timeout is 30 s: waited afresh, this fails
        await coalescer.wait("k")
    successor = coalescer.claim("k")
    assert successor is not None
    await coalescer.release(hung)  # the hung one ending late lets nobody else lead
    assert coalescer.claim("k") is None
    await coalescer.release(successor)
    assert coalescer.claim("k") is not None
