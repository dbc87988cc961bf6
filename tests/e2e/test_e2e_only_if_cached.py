"""`only-if-cached` with `no-cache` or `no-store` refuses every stored answer and the upstream
alike: nothing can satisfy it, and RFC 9111 5.2.1.7 answers 504. Real proxies in every cache mode
share one Redis holding the answer; the official SDK and curl ask."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator

import openai
import orjson
import pytest
from openai import OpenAI

from proxy.core.policy import CacheMode
from tests.fixtures_procs import Proxy, Sim, running_proxies

MESSAGES = [{"role": "user", "content": "Name a colour."}]
UNSATISFIABLE = ["no-cache, only-if-cached", "only-if-cached, no-store", "No-Cache,Only-If-Cached"]


@pytest.fixture
def recorded(sim: Sim, redis_url: str) -> Iterator[Callable[[CacheMode], Proxy]]:
    """A proxy of the cache mode asked for, on a Redis holding the answer to MESSAGES."""
    configs = {mode.value: ("--store", redis_url, "--cache-mode", mode.value) for mode in CacheMode}
    with running_proxies(sim.v1, configs) as started:
        with client(started["readwrite"]) as sdk:
            assert ask(sdk).headers["X-Repro-Cache"] == "MISS"
            assert ask(sdk, "only-if-cached").headers["X-Repro-Cache"] == "HIT"
        yield lambda mode: started[mode.value]


def client(proxy: Proxy) -> OpenAI:
    return OpenAI(base_url=proxy.v1, api_key="sk-alice")  # retries as the SDK does by default


def ask(sdk: OpenAI, cache_control: str | None = None) -> openai.APIResponse[object]:
    headers = {"Cache-Control": cache_control} if cache_control else {}
    response: openai.APIResponse[object] = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers=headers
    )  # type: ignore[assignment]
    return response


def test_only_if_cached_with_no_cache_or_no_store_is_a_504_in_every_mode(
    recorded: Callable[[CacheMode], Proxy], sim: Sim
) -> None:
    asked = len(sim.llm_requests())
    for mode in CacheMode:
        proxy = recorded(mode)
        for cache_control in UNSATISFIABLE:
            with client(proxy) as sdk, pytest.raises(openai.APIStatusError) as info:
                ask(sdk, cache_control)
            error = info.value
            assert (error.status_code, error.code) == (504, "cache_miss"), (mode, cache_control)
            assert error.response.headers["x-should-retry"] == "false"  # one request, not three
            assert "may not be answered from the cache" in error.message
            # the message names what bars each way: never a cache mode that bars neither
            barred = "cache mode replay" if mode is CacheMode.REPLAY else "Cache-Control: only"
            assert f"may not reach the upstream ({barred}" in error.message, error.message
            why = "cache mode off" if mode is CacheMode.OFF else "no-cache, no-store"
            assert f"may not be answered from the cache ({why}" in error.message, error.message
        route = "/v1/chat/completions"
        assert proxy.metric("repro_requests_total", route=route, cache="error") == 3, mode
        if mode is not CacheMode.OFF:  # the answer is there, for a request that accepts it
            with client(proxy) as sdk:
                assert ask(sdk, "only-if-cached").headers["X-Repro-Cache"] == "HIT", mode
                assert ask(sdk, "max-age=3600, only-if-cached").headers["X-Repro-Cache"] == "HIT"
    assert len(sim.llm_requests()) == asked


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_gets_the_504_whichever_way_the_directives_are_written(
    recorded: Callable[[CacheMode], Proxy],
) -> None:
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}).decode()
    for lines in (
        ["Cache-Control: no-cache, only-if-cached"],
        ["Cache-Control: no-cache", "Cache-Control: only-if-cached"],  # one list on two lines
        ["Cache-Control: only-if-cached", "Cache-Control: no-store"],
    ):
        argv = ["curl", "-s", "-i", "--max-time", "10", "--noproxy", "*"]
        for line in [*lines, "Authorization: Bearer sk-alice", "Content-Type: application/json"]:
            argv += ["-H", line]
        argv += ["--data-binary", body, recorded(CacheMode.READWRITE).v1 + "/chat/completions"]
        done = subprocess.run(argv, capture_output=True, timeout=30, check=True)
        head, _, answer = done.stdout.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 504"), lines
        assert b"\r\nx-should-retry: false" in head.lower()
        assert orjson.loads(answer)["error"]["code"] == "cache_miss"
