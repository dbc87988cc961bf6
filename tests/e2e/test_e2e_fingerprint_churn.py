"""A hostile upstream naming a new fingerprint with every answer (real processes, real Redis):
each key keeps a bounded number of answers, where every miss had added one for good and every
lookup of the key read them all."""

from __future__ import annotations

import asyncio
import itertools

import redis

from proxy.core.fingerprints import ANSWERS_KEPT
from tests.fixtures_procs import ProxyFactory
from tests.hostile import Received, Scripted, completion, http_answer


def churning() -> Scripted:
    named = itertools.count()

    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        body = completion("an answer", fingerprint=f"fp_{next(named):04d}")
        writer.write(http_answer(body, "Content-Type: application/json"))
        await writer.drain()

    return Scripted(write)


def test_a_key_under_a_new_fingerprint_each_time_keeps_a_bounded_number_of_answers(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    with churning() as upstream:
        proxy = start_proxy("--store", redis_url, upstream=upstream.v1)
        asked = 0
        for _ in range(ANSWERS_KEPT + 12):
            for content in ("one", "two"):  # each answer moves the other key's fingerprint
                answer = proxy.chat(content, key="sk-alice")
                assert answer.status_code == 200
                asked += answer.headers["X-Repro-Cache"] == "MISS"
        assert asked == 2 * (ANSWERS_KEPT + 12)
    entries = list(client.scan_iter("repro:e:*"))
    assert len(entries) == 2
    for entry in entries:
        assert client.hlen(entry) == ANSWERS_KEPT + 1  # and the labels
