"""Time-dependent behaviour with an injected clock instead of sleeps: the proxy runs in process
(create_app with a clock the test moves), in front of the real sim.

TTL and max-age, the key check's interval and the fingerprint grace each depend on how much
time has passed; here the test decides that, so each check is exact and takes no wall time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from proxy import config
from proxy.server.app import create_app
from tests.fixtures_procs import Sim

BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "clock?"}]})


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Post = Callable[..., Awaitable[ClientResponse]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def started(sim: Sim, clock: Clock) -> AsyncIterator[Callable[..., Awaitable[Post]]]:
    """Start an in-process proxy with these flags; returns a poster for chat completions."""
    clients: list[TestClient[object, object]] = []

    async def start(**flags: str) -> Post:
        settings = config.load({"upstream": sim.v1, **flags}, environ={})
        client: TestClient[object, object] = TestClient(
            TestServer(create_app(settings, clock=clock, environ={}))
        )
        await client.start_server()
        clients.append(client)

        async def post(key: str = "sk-alice", **headers: str) -> ClientResponse:
            response = await client.post(
                "/v1/chat/completions",
                data=BODY,
                headers={"Authorization": f"Bearer {key}", **headers},
            )
            await response.read()
            return response

        return post

    yield start
    for client in clients:
        await client.close()


async def test_an_entry_older_than_the_ttl_is_a_miss(
    started: Callable[..., Awaitable[Post]], clock: Clock
) -> None:
    post = await started(ttl="60")
    assert (await post()).headers["X-Repro-Cache"] == "MISS"
    clock.advance(59)
    hit = await post()
    assert (hit.headers["X-Repro-Cache"], hit.headers["Age"]) == ("HIT", "59")
    clock.advance(2)
    assert (await post()).headers["X-Repro-Cache"] == "MISS"


async def test_max_age_refuses_an_entry_older_than_it(
    started: Callable[..., Awaitable[Post]], clock: Clock
) -> None:
    post = await started()
    await post()
    clock.advance(30)
    assert (await post(**{"Cache-Control": "max-age=31"})).headers["X-Repro-Cache"] == "HIT"
    assert (await post(**{"Cache-Control": "max-age=29"})).headers["X-Repro-Cache"] == "MISS"


async def test_max_age_with_only_if_cached_takes_only_a_younger_entry(
    started: Callable[..., Awaitable[Post]], clock: Clock
) -> None:
    """max-age=N takes an entry younger than N seconds; none younger, only-if-cached makes it
    a 504 rather than a call upstream (max-age=0: never a stored one)."""
    post = await started()
    await post()
    missed = await post(**{"Cache-Control": "max-age=0, only-if-cached"})
    assert (missed.status, (await missed.json())["error"]["code"]) == (504, "cache_miss")
    assert missed.headers["x-should-retry"] == "false"
    clock.advance(29.5)
    hit = await post(**{"Cache-Control": "max-age=30, only-if-cached"})
    assert (hit.headers["X-Repro-Cache"], hit.headers["Age"]) == ("HIT", "29")
    clock.advance(0.5)
    missed = await post(**{"Cache-Control": "max-age=30, only-if-cached"})
    assert missed.status == 504


async def test_a_revoked_key_reads_nothing_once_its_verdict_expires(
    started: Callable[..., Awaitable[Post]], clock: Clock, sim: Sim
) -> None:
    post = await started(key_check_interval="300")
    assert (await post()).headers["X-Repro-Cache"] == "MISS"
    sim.accept_keys("sk-bob")
    clock.advance(299)
    assert (await post()).headers["X-Repro-Cache"] == "HIT"  # the verdict still stands
    clock.advance(2)
    assert (await post()).status == 401  # asked again: refused, and the upstream's 401 passes
    sim.accept_keys()
    # refused, it reads nothing, but the upstream may answer it again; that answer vouches anew
    assert (await post()).headers["X-Repro-Cache"] == "MISS"
    assert (await post()).headers["X-Repro-Cache"] == "HIT"
    checks = [r for r in sim.requests() if r["path"] == "/v1/models"]
    assert len(checks) == 1  # only once the verdict had expired


async def test_the_grace_keeps_an_older_fingerprint_current_for_its_seconds_only(
    started: Callable[..., Awaitable[Post]], clock: Clock, sim: Sim
) -> None:
    post = await started(fingerprint_grace="60")
    first = await post()
    assert first.headers["X-Repro-Fingerprint"] == "fp_sim_0001"
    sim.set_fingerprint("fp_sim_0002")
    rotated = await post(**{"Cache-Control": "no-store"})  # the proxy learns the rotation
    assert rotated.headers["X-Repro-Fingerprint"] == "fp_sim_0002"
    clock.advance(30)
    assert (await post()).headers["X-Repro-Cache"] == "HIT"  # fp_sim_0001 answered 30 s ago
    clock.advance(31)
    late = await post()
    assert (late.headers["X-Repro-Cache"], late.headers["X-Repro-Fingerprint"]) == (
        "MISS",
        "fp_sim_0002",
    )


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_stale_if_error_never_serves_an_entry_older_than_the_ttl(
    started: Callable[..., Awaitable[Post]],
    clock: Clock,
    sim: Sim,
    store: str,
    request: pytest.FixtureRequest,
) -> None:
    """`--ttl` bounds how long an answer may be served at all (a retention rule): a stored
    copy the store still holds (Redis keeps a key's older fingerprints while newer ones are
    written, the near-cache keeps what it read) must not come back as STALE past it, whatever
    window the client asks for."""
    flags = {"ttl": "60"}
    if store == "redis":
        flags["store"] = request.getfixturevalue("redis_url")
    post = await started(**flags)
    assert (await post()).headers["X-Repro-Cache"] == "MISS"
    sim.fault(kind="status", status=503)
    clock.advance(59)
    within = await post(**{"Cache-Control": "no-cache, stale-if-error=100000"})
    assert within.headers["X-Repro-Cache"] == "STALE"
    clock.advance(2)
    sim.fault(kind="status", status=503)
    past = await post(**{"Cache-Control": "no-cache, stale-if-error=100000"})
    assert past.status == 503
    assert past.headers.get("X-Repro-Cache") != "STALE"
