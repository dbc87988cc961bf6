"""Attacks on who may read the cache: unrecognised credentials, stale answers, public model
lists and hung key checks, against real proxy processes and a hostile upstream written here."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from openai import OpenAI

from tests.fixtures_procs import Proxy, ProxyFactory, Sim

BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "who?"}]})
HANG_BOUND = 30.0


@dataclass
class Gateway:
    """An OpenAI-compatible upstream with a gateway's habits, on loopback in its own thread.

    `accepts` decides from the request headers whether the chat route serves a caller;
    `models` is `checked` (as the chat route), `public` (2xx to anyone) or `hang`; `down`
    makes the chat route answer 503 to everyone. Each chat answer carries a fresh number, so a
    HIT is told from a new answer by its content."""

    accepts: Callable[[CIMultiDictProxy[str]], bool]
    models: str = "checked"
    down: bool = False
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    port: int = 0
    _count: itertools.count[int] = field(default_factory=itertools.count)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _released: asyncio.Event | None = None

    @property
    def v1(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def calls(self, path: str) -> int:
        return sum(1 for _, p, _ in self.seen if p == path)

    async def _chat(self, request: web.Request) -> web.Response:
        self._seen(request)
        if self.down:
            return _error(503, "overloaded", "server_error")
        if not self.accepts(request.headers):
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        number = next(self._count)
        return web.json_response(
            {
                "id": f"chatcmpl-{number}",
                "object": "chat.completion",
                "model": "gpt-4o-mini",
                "system_fingerprint": "fp_gateway",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"answer {number}"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }
        )

    async def _models(self, request: web.Request) -> web.Response:
        self._seen(request)
        if self.models == "hang":
            assert self._released is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), HANG_BOUND)
        elif self.models == "checked" and not self.accepts(request.headers):
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        return web.json_response({"object": "list", "data": [{"id": "gpt-4o-mini"}]})

    def _seen(self, request: web.Request) -> None:
        self.seen.append((request.method, request.path, dict(request.headers)))

    def start(self) -> None:
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        assert started.wait(10), "the gateway did not start"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        self._loop.run_until_complete(self._serve())
        started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    async def _serve(self) -> None:
        self._released = asyncio.Event()
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        assert self._released is not None
        self._loop.call_soon_threadsafe(self._released.set)
        self._loop.call_soon_threadsafe(self._loop.stop)


def _error(status: int, message: str, code: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return web.json_response(body, status=status)


@pytest.fixture
def gateway() -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def start(accepts: Callable[[CIMultiDictProxy[str]], bool], **options: Any) -> Gateway:
        peer = Gateway(accepts, **options)
        peer.start()
        started.append(peer)
        return peer

    try:
        yield start
    finally:
        for peer in started:
            peer.stop()


def bearer(*keys: str) -> Callable[[CIMultiDictProxy[str]], bool]:
    return lambda headers: headers.get("Authorization", "") in {f"Bearer {k}" for k in keys}


def post(proxy: Proxy, timeout: float = 10, **headers: str) -> httpx.Response:
    return httpx.post(
        proxy.v1 + "/chat/completions",
        content=BODY,
        headers={"Content-Type": "application/json", **headers},
        timeout=timeout,
    )


def key(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}"}


# 1. Unrecognised credentials ----------------------------------------------------------------


def test_x_api_key_tenants_and_keyless_callers_never_read_each_others_answers(
    start_proxy: ProxyFactory, gateway: Callable[..., Gateway]
) -> None:
    upstream = gateway(lambda h: h.get("x-api-key") in {"xk-alice", "xk-bob"})
    proxy = start_proxy(upstream=upstream.v1)
    alice = post(proxy, **{"x-api-key": "xk-alice"})
    assert (alice.status_code, alice.headers["X-Repro-Cache"]) == (200, "MISS")
    assert post(proxy, **{"x-api-key": "xk-alice"}).headers["X-Repro-Cache"] == "HIT"
    bob = post(proxy, **{"X-API-Key": "xk-bob"})
    assert (bob.status_code, bob.headers["X-Repro-Cache"]) == (200, "MISS")
    assert bob.content != alice.content
    assert bob.headers["X-Repro-Key"] != alice.headers["X-Repro-Key"]
    for stranger in ({}, {"x-api-key": "xk-mallory"}):
        refused = post(proxy, **stranger)
        assert refused.status_code == 401
        assert refused.content != alice.content


GATEWAY_HEADERS = ["apikey", "x-litellm-api-key", "Helicone-Auth", "X-Auth-Token", "X-Access-Token"]
"""Headers gateways take keys in that no setting names: Kong's and WSO2's `apikey`, LiteLLM's,
Helicone's, and the usual token headers of hand-made gateways."""


@pytest.mark.parametrize("name", GATEWAY_HEADERS)
def test_a_key_in_a_header_no_setting_names_still_makes_a_tenant(
    start_proxy: ProxyFactory, gateway: Callable[..., Gateway], name: str
) -> None:
    """Read as no key, every such caller would be `anonymous`, and once the gateway served one
    of them the others would read its answers: a name that says it holds a credential is
    read as one, whether or not the operator thought of it."""
    upstream = gateway(lambda h: h.get(name) in {"gk-alice", "gk-bob"})
    proxy = start_proxy(upstream=upstream.v1)
    alice = post(proxy, **{name: "gk-alice"})
    assert (alice.status_code, alice.headers["X-Repro-Cache"]) == (200, "MISS")
    assert post(proxy, **{name: "gk-alice"}).headers["X-Repro-Cache"] == "HIT"
    bob = post(proxy, **{name: "gk-bob"})
    assert (bob.status_code, bob.headers["X-Repro-Cache"]) == (200, "MISS")
    assert bob.content != alice.content
    for stranger in ({}, {name: "gk-mallory"}):
        refused = post(proxy, **stranger)
        assert refused.status_code == 401


def test_a_key_in_a_query_parameter_no_setting_names_makes_a_tenant_and_is_not_stored(
    start_proxy: ProxyFactory, gateway: Callable[..., Gateway]
) -> None:
    """Kong reads `?apikey=`, OAuth gateways `?access_token=`: credentials, not keyed (so
    never in a stored answer, a cassette or an export) and partitioning by tenant."""
    upstream = gateway(lambda h: True)
    proxy = start_proxy("--admin-token", "adm", upstream=upstream.v1)
    for query in ("apikey=qk-alice", "access_token=qk-alice"):
        url = f"{proxy.v1}/chat/completions?{query}"
        sent = httpx.post(url, content=BODY, headers={"Content-Type": "application/json"})
        assert sent.status_code == 200
        other = url.replace("alice", "bob")
        again = httpx.post(other, content=BODY, headers={"Content-Type": "application/json"})
        assert again.headers["X-Repro-Key"] != sent.headers["X-Repro-Key"]
    exported = httpx.get(proxy.url + "/admin/export", headers={"Authorization": "Bearer adm"})
    assert exported.status_code == 200 and exported.content
    assert b"qk-alice" not in exported.content and b"qk-bob" not in exported.content


def test_basic_auth_users_get_partitions_of_their_own(
    start_proxy: ProxyFactory, gateway: Callable[..., Gateway]
) -> None:
    users = {"Basic YWxpY2U6cHc=", "Basic Ym9iOnB3"}
    upstream = gateway(lambda h: h.get("Authorization") in users)
    proxy = start_proxy(upstream=upstream.v1)
    alice = post(proxy, Authorization="Basic YWxpY2U6cHc=")
    assert post(proxy, Authorization="Basic YWxpY2U6cHc=").headers["X-Repro-Cache"] == "HIT"
    bob = post(proxy, Authorization="Basic Ym9iOnB3")
    assert bob.headers["X-Repro-Cache"] == "MISS"
    assert bob.headers["X-Repro-Key"] != alice.headers["X-Repro-Key"]
    keyless = post(proxy)
    assert keyless.status_code == 401


def test_an_extra_credential_header_partitions_the_cache_whatever_its_case(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy("--credential-header", "X-Org-Token")
    first = post(proxy, **key("sk-shared"), **{"X-Org-Token": "org-1"})
    assert first.headers["X-Repro-Cache"] == "MISS"
    again = post(proxy, **key("sk-shared"), **{"x-org-token": "org-1"})
    assert again.headers["X-Repro-Cache"] == "HIT"
    assert again.headers["X-Repro-Key"] == first.headers["X-Repro-Key"]
    other = post(proxy, **key("sk-shared"), **{"X-ORG-TOKEN": "org-2"})
    assert other.headers["X-Repro-Cache"] == "MISS"
    assert other.headers["X-Repro-Key"] != first.headers["X-Repro-Key"]
    without = post(proxy, **key("sk-shared")).headers["X-Repro-Key"]
    assert without not in (first.headers["X-Repro-Key"], other.headers["X-Repro-Key"])


def test_extra_credential_headers_come_from_the_environment_too(
    start_proxy: ProxyFactory, gateway: Callable[..., Gateway]
) -> None:
    tokens = {"t-alice", "t-bob"}
    upstream = gateway(lambda h: h.get("X-Tenant") in tokens, models="checked")
    proxy = start_proxy(env={"REPRO_CREDENTIAL_HEADER": "x-other, X-Tenant"}, upstream=upstream.v1)
    alice = post(proxy, **{"X-Tenant": "t-alice"})
    assert post(proxy, **{"X-Tenant": "t-alice"}).headers["X-Repro-Cache"] == "HIT"
    bob = post(proxy, **{"X-Tenant": "t-bob"})
    assert bob.headers["X-Repro-Cache"] == "MISS"
    assert bob.content != alice.content
    checked = [h for _, path, h in upstream.seen if path == "/v1/models"]
    assert checked == []  # both were vouched for by their own real answers
    assert post(proxy).status_code == 401


def test_the_openai_sdk_with_azure_style_and_bearer_keys_gets_separate_partitions(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy()
    with OpenAI(base_url=proxy.v1, api_key="sk-alice", max_retries=0) as sdk:
        create = sdk.chat.completions.with_raw_response.create
        messages: Any = [{"role": "user", "content": "who?"}]
        plain = create(model="gpt-4o-mini", messages=messages)
        extra = create(model="gpt-4o-mini", messages=messages, extra_headers={"x-api-key": "other"})
    assert plain.headers["X-Repro-Key"] != extra.headers["X-Repro-Key"]
    assert extra.headers["X-Repro-Cache"] == "MISS"


def test_keyless_callers_stop_reading_once_the_upstream_stops_serving_them(
    start_proxy: ProxyFactory, gateway: Callable[..., Gateway]
) -> None:
    open_to_all = True
    upstream = gateway(lambda h: open_to_all or "Authorization" in h)
    proxy = start_proxy("--key-check-interval", "1", upstream=upstream.v1)
    stored = post(proxy)
    assert post(proxy).headers["X-Repro-Cache"] == "HIT"
    open_to_all = False
    time.sleep(1.1)
    for _ in range(2):
        refused = post(proxy)
        assert refused.status_code == 401
        assert refused.content != stored.content
    assert upstream.calls("/v1/models") == 0


# 2. Stale answers pass the key check -------------------------------------------------------


def test_a_made_up_key_gets_the_upstream_error_not_a_stale_answer(
    start_proxy: ProxyFactory, gateway: Callable[..., Gateway]
) -> None:
    upstream = gateway(bearer("sk-alice"))
    proxy = start_proxy("--cache-scope", "shared", "--stale-if-error", "3600", upstream=upstream.v1)
    stored = post(proxy, **key("sk-alice"))
    assert stored.headers["X-Repro-Cache"] == "MISS"
    upstream.down = True
    asks: list[dict[str, str]] = [
        {},
        {"Cache-Control": "no-cache"},
        {"Cache-Control": "stale-if-error=3600"},
        {"Cache-Control": "no-cache, stale-if-error=3600"},
    ]
    for stranger in (key("sk-mallory"), {}, {"x-api-key": "made-up"}):
        for ask in asks:
            answer = post(proxy, **stranger, **ask)
            assert answer.status_code == 503, (stranger, ask)
            assert answer.content != stored.content
    stale = post(proxy, **key("sk-alice"), **{"Cache-Control": "no-cache"})
    assert (stale.status_code, stale.headers["X-Repro-Cache"]) == (200, "STALE")
    assert stale.content == stored.content


# 3. A public model list proves nothing -----------------------------------------------------


def test_a_public_model_list_lets_no_made_up_key_read_the_shared_cache(
    start_proxy: ProxyFactory, gateway: Callable[..., Gateway]
) -> None:
    upstream = gateway(bearer("sk-alice", "sk-bob"), models="public")
    proxy = start_proxy("--cache-scope", "shared", upstream=upstream.v1)
    stored = post(proxy, **key("sk-alice"))
    assert stored.headers["X-Repro-Cache"] == "MISS"
    for stranger in (key("sk-mallory"), {}, {"x-api-key": "made-up"}):
        for _ in range(2):
            refused = post(proxy, **stranger)
            assert refused.status_code == 401
            assert refused.content != stored.content
        cached_only = post(proxy, **stranger, **{"Cache-Control": "only-if-cached"})
        assert cached_only.status_code == 504
    bob = post(proxy, **key("sk-bob"))  # unproven until the upstream serves bob himself
    assert (bob.status_code, bob.headers["X-Repro-Cache"]) == (200, "MISS")
    hit = post(proxy, **key("sk-bob"))
    assert (hit.status_code, hit.headers["X-Repro-Cache"]) == (200, "HIT")
    assert hit.content == bob.content


def test_an_upstream_that_serves_made_up_keys_keeps_the_shared_cache_open(
    start_proxy: ProxyFactory, gateway: Callable[..., Gateway]
) -> None:
    upstream = gateway(lambda h: "Authorization" in h, models="public")
    proxy = start_proxy("--cache-scope", "shared", upstream=upstream.v1)
    stored = post(proxy, **key("sk-alice"))
    other = post(proxy, **key("sk-anyone"))
    assert (other.headers["X-Repro-Cache"], other.content) == ("HIT", stored.content)
    assert post(proxy).status_code == 401  # keyless: the upstream refuses, so nothing is read


# 4. A hung upstream does not hold HITs -----------------------------------------------------


def test_a_hung_key_check_is_cut_at_its_deadline_merged_and_trusted_for_one_more_interval(
    start_proxy: ProxyFactory, gateway: Callable[..., Gateway]
) -> None:
    upstream = gateway(bearer("sk-alice"))
    proxy = start_proxy(
        "--cache-scope",
        "shared",
        "--key-check-interval",
        "2",
        "--key-check-timeout",
        "0.5",
        upstream=upstream.v1,
    )
    stored = post(proxy, **key("sk-alice"))
    accepted_at = time.monotonic()  # the 2xx vouches for alice from here
    upstream.models = "hang"
    time.sleep(max(0.0, accepted_at + 2.2 - time.monotonic()))

    async def many(count: int) -> list[tuple[httpx.Response, float]]:
        async with httpx.AsyncClient(timeout=10) as http:

            async def one() -> tuple[httpx.Response, float]:
                started = time.monotonic()
                answer = await http.post(
                    proxy.v1 + "/chat/completions",
                    content=BODY,
                    headers={"Content-Type": "application/json", **key("sk-alice")},
                )
                return answer, time.monotonic() - started

            return await asyncio.gather(*(one() for _ in range(count)))

    checked_before = upstream.calls("/v1/models")
    answers = asyncio.run(many(8))
    for answer, took in answers:
        assert (answer.status_code, answer.headers["X-Repro-Cache"]) == (200, "HIT")
        assert answer.content == stored.content
        assert took < 0.5 + 1.0
    assert upstream.calls("/v1/models") == checked_before + 1
    time.sleep(max(0.0, accepted_at + 4.2 - time.monotonic()))
    started = time.monotonic()
    past = post(proxy, **key("sk-alice"), **{"Cache-Control": "only-if-cached"})
    assert past.status_code == 504
    assert time.monotonic() - started < 0.5 + 1.0
    upstream.models = "checked"  # no verdict is kept from a check that timed out
    back = post(proxy, **key("sk-alice"))
    assert (back.status_code, back.headers["X-Repro-Cache"]) == (200, "HIT")
