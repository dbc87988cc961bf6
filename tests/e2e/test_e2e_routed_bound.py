"""A client inventing a keyed header value per request (each a new fleet, `<model>@fleet-…`)
against a real proxy and the sim: routed lineages are kept apart (ROUTED_KEPT), so they never
push another tenant's models out of the fingerprint state kept.

Before: routed lineages counted with the models' MODELS_KEPT, so enough of them made every
other tenant's model forgotten (the memory store's least recently used first; Redis's keep drew
models at random), each of their next lookups a MISS."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
import redis

from bench.procs import settled
from proxy.core.fingerprints import MODELS_KEPT, ROUTED_KEPT
from tests.fixtures_procs import ProxyFactory

VICTIM = {"Authorization": "Bearer sk-victim"}
ATTACKER = {"Authorization": "Bearer sk-attacker"}
VICTIM_MODELS = [f"victim-model-{number:02d}" for number in range(16)]
"""Many models, so that Redis's keep, drawing at random, would draw one of them on the old code
all but surely ((1024/1552)^16 < 0.2%)."""
INVENTED = MODELS_KEPT + 512
"""Routings the attacker invents: more than every model kept."""
AT_ONCE = 8


def _body(model: str, prompt: str) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": prompt}]})


async def _ask(client: httpx.AsyncClient, model: str, headers: dict[str, str]) -> str:
    answer = await client.post(
        "/chat/completions",
        content=_body(model, "q"),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    return answer.headers["X-Repro-Cache"]


async def _attack(client: httpx.AsyncClient) -> None:
    """Each request a new value of a gateway's provider header: keyed, so each a new fleet."""
    for start in range(0, INVENTED, AT_ONCE):
        sent = [
            _ask(client, "gpt-4o-mini", {**ATTACKER, "x-portkey-provider": f"p-{n}"})
            for n in range(start, min(start + AT_ONCE, INVENTED))
        ]
        assert set(await asyncio.gather(*sent)) == {"MISS"}


async def _victim(client: httpx.AsyncClient) -> list[str]:
    return [await _ask(client, model, VICTIM) for model in VICTIM_MODELS]


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_invented_routings_never_make_another_tenants_model_a_miss(
    start_proxy: ProxyFactory, store: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("redis_url") if store == "redis" else ""
    proxy = start_proxy(*(["--store", url] if url else []))

    async def run() -> list[str]:
        async with httpx.AsyncClient(base_url=proxy.v1, timeout=10) as client:
            assert await _victim(client) == ["MISS"] * len(VICTIM_MODELS)
            await _attack(client)
            if url:  # the proxy's keep round trims Redis's indexes (every 5 s)
                with redis.Redis.from_url(url) as server:
                    left = settled(
                        lambda: (server.scard("repro:models"), server.scard("repro:routed")),
                        lambda n: n[0] <= MODELS_KEPT and n[1] <= ROUTED_KEPT,
                        within=30,
                    )
                    assert left[0] <= MODELS_KEPT and left[1] <= ROUTED_KEPT
            return await _victim(client)

    assert asyncio.run(run()) == ["HIT"] * len(VICTIM_MODELS)
