"""The admin surface attacked across replicas sharing one Redis: a guesser spreading its
guesses over them or sending them all at once, and a session copied before its owner logged
out. Real proxy
processes and a real redis-server; raw aiohttp requests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp
import redis

from proxy.server import guesses, session
from tests.e2e.test_e2e_admin_attacks import ADMIN, session_value
from tests.fixtures_procs import Proxy, ProxyFactory


async def guess(http: aiohttp.ClientSession, proxy: Proxy, attempt: int) -> int:
    wrong = {"Authorization": f"Bearer guess-{attempt}"}
    async with http.get(proxy.url + "/admin/stats", headers=wrong) as response:
        return response.status


async def reads(
    http: aiohttp.ClientSession, proxies: Sequence[Proxy], sessions: Sequence[dict[str, str]]
) -> set[int]:
    """The statuses each session's read of `/admin/stats` gets on each proxy."""
    found = set()
    for proxy in proxies:
        for shown in sessions:
            async with http.get(proxy.url + "/admin/stats", headers=shown) as response:
                found.add(response.status)
    return found


async def log_out(http: aiohttp.ClientSession, proxy: Proxy, shown: dict[str, str]) -> int:
    url, headers = proxy.url + "/admin/ui/logout", {**shown, "Origin": proxy.url}
    async with http.post(url, headers=headers) as response:
        return response.status


async def test_replicas_sharing_a_store_share_the_guess_allowance(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    """Each replica (or worker) counting alone would give a guesser the allowance once per
    process behind the load balancer."""
    first, second = (start_proxy("--admin-token", ADMIN, "--store", redis_url) for _ in range(2))
    async with aiohttp.ClientSession() as http:
        statuses = [await guess(http, first, n) for n in range(guesses.ALLOWED)]
        assert statuses == [401] * guesses.ALLOWED
        assert await guess(http, second, guesses.ALLOWED) == 429
        right = {"Authorization": f"Bearer {ADMIN}"}
        async with http.get(second.url + "/admin/stats", headers=right) as response:
            assert response.status == 429


async def test_logging_out_ends_the_session_on_every_replica(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    """A copy of the session taken before the logout (a shared machine, a stolen backup of the
    browser's session) reads nothing after it, on whichever replica it is shown."""
    first, second = (start_proxy("--admin-token", ADMIN, "--store", redis_url) for _ in range(2))
    copied = {session.HEADER: await session_value(first)}
    async with aiohttp.ClientSession() as http:
        async with http.get(second.url + "/admin/stats", headers=copied) as response:
            assert response.status == 200
        assert await log_out(http, first, copied) == 204
        respelled = {session.HEADER: "0" + copied[session.HEADER]}  # no second spelling
        assert await reads(http, (first, second), (copied, respelled)) == {401}
        fresh = {session.HEADER: await session_value(second)}
        assert await reads(http, (first,), (fresh,)) == {200}  # a new login, a new session


async def test_concurrent_wrong_tokens_are_heard_no_more_than_the_allowance(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    """Each try waits on Redis for the shared count before its token is compared: sent at
    once, every try passed that check before any was counted wrong, and a guesser was heard as
    many times as it opened connections (200 of 200)."""
    proxy = start_proxy("--admin-token", ADMIN, "--store", redis_url)
    tries = 10 * guesses.ALLOWED
    connector = aiohttp.TCPConnector(limit=tries)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def login(attempt: int) -> int:
            url, wrong = proxy.url + "/admin/ui/login", {"token": f"guess-{attempt}"}
            async with http.post(url, data=wrong, headers={"Origin": proxy.url}) as response:
                return response.status

        async def bearer(attempt: int) -> int:
            wrong = {"Authorization": f"Bearer guess-{attempt}"}
            async with http.get(proxy.url + "/admin/export", headers=wrong) as response:
                return response.status

        statuses = await asyncio.gather(
            *(login(n) for n in range(tries // 2)), *(bearer(n) for n in range(tries // 2))
        )
        assert set(statuses) == {401, 429}
        assert statuses.count(401) <= guesses.ALLOWED, statuses.count(401)
        right = {"Authorization": f"Bearer {ADMIN}"}
        async with http.get(proxy.url + "/admin/stats", headers=right) as response:
            assert response.status == 429


async def test_a_store_that_lost_its_marks_admits_no_session_issued_before(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    """A logout was remembered alone, as a mark in the store: a Redis restarted empty (or
    flushed) forgot it, and the copy taken before the logout read again for the rest of its
    twelve hours."""
    first, second = (start_proxy("--admin-token", ADMIN, "--store", redis_url) for _ in range(2))
    copied = {session.HEADER: await session_value(first)}
    kept = {session.HEADER: await session_value(second)}
    async with aiohttp.ClientSession() as http:
        assert await log_out(http, first, copied) == 204
        with redis.Redis.from_url(redis_url) as client:
            client.flushall()
        assert await reads(http, (first, second), (copied, kept)) == {401}
        fresh = {session.HEADER: await session_value(second)}
        assert await reads(http, (first,), (fresh,)) == {200}
