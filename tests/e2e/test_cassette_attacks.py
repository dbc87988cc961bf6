"""Hostile cassette lines imported into a real proxy: a line says more about its answer than
its request does (model, stream flag, fingerprint, content type, counts, time), and each of
those reaches headers, fingerprint state, metrics or exports."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI

from tests.fixtures_procs import Proxy, ProxyFactory

TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SHARED = ("--admin-token", TOKEN, "--cache-scope", "shared")
MESSAGES = [{"role": "user", "content": "Carry me over."}]


@pytest.fixture
def recorded(start_proxy: ProxyFactory) -> dict[str, Any]:
    """One chat answer's cassette line, as a proxy exports it."""
    source = start_proxy(*SHARED)
    with OpenAI(base_url=source.v1, api_key="sk-alice", max_retries=0) as sdk:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    line: dict[str, Any] = orjson.loads(
        httpx.get(source.url + "/admin/export", headers=ADMIN, timeout=5).content
    )
    return line


def ask(proxy: Proxy) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    return httpx.post(
        proxy.v1 + "/chat/completions",
        json=body,
        headers={"Authorization": "Bearer sk-alice"},
        timeout=10,
    )


def admin_get(proxy: Proxy, path: str) -> httpx.Response:
    return httpx.get(proxy.url + path, headers=ADMIN, timeout=5)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o", "fingerprint": "fp_forged"},  # teaches another model's fingerprint
        {"stream": True},  # an SSE kind of entry for a request that is not a stream
        {"fingerprint": "fp forged\u0001"},
        {"content_type": "text/plain\r\nX-Injected: 1"},  # every HIT was an unhandled error
        {"content_type": "text/html", "stream": True, "request": {"stream": True}},
        {"prompt_tokens": -5},
        {"seed": 2**63},
        {"stored_at": 1e300},  # every export and fingerprint report was a 500
        {"stored_at": -1.0},
        # what no request reaches, kept and never served: a route the proxy does not cache,
        {"route": "/v1/files"},
        {"route": "/v1/chat/completions/../../admin/stats"},
        {"route": ""},
        {"route": "/openai/deployments/a%2Fb/chat/completions"},
        {"route": "GET /v1/../admin/stats"},
        # names past the bounds live requests are held to (every process keeps the model's),
        {"model": "m" * 300, "request": {"model": "m" * 300}},
        {"namespace": "n" * 300},
        {"body_base64": "!!!"},  # and an answer that is no base64, read as an empty one
    ],
)
def test_a_line_that_says_what_its_request_cannot_is_refused_whole(
    start_proxy: ProxyFactory, recorded: dict[str, Any], change: dict[str, Any]
) -> None:
    target = start_proxy(*SHARED)
    forged = {**recorded, **change}
    if "request" in change:
        forged["request"] = {**recorded["request"], **change["request"]}
    refused = httpx.post(
        target.url + "/admin/import", content=orjson.dumps(forged), headers=ADMIN, timeout=10
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["message"].startswith("The cassette is not valid: ")
    assert admin_get(target, "/admin/stats").json()["entries"] == 0
    assert admin_get(target, "/admin/fingerprints").json() == {}
    assert ask(target).headers["X-Repro-Cache"] == "MISS"


def test_a_line_from_the_future_is_stored_as_of_now(
    start_proxy: ProxyFactory, recorded: dict[str, Any]
) -> None:
    target = start_proxy(*SHARED)
    future = {**recorded, "stored_at": time.time() + 10 * 365 * 86400}
    imported = httpx.post(
        target.url + "/admin/import", content=orjson.dumps(future), headers=ADMIN, timeout=10
    )
    assert imported.json() == {"imported": 1}
    exported = orjson.loads(admin_get(target, "/admin/export").content)
    assert exported["stored_at"] <= time.time()
    hit = ask(target)
    assert (hit.status_code, hit.headers["X-Repro-Cache"]) == (200, "HIT")


def test_a_response_fetched_by_id_is_never_older_than_the_ttl(start_proxy: ProxyFactory) -> None:
    """A fetch by id is a HIT like any other: an answer the store still holds past --ttl (an
    old cassette's, or an older fingerprint in a Redis hash) is not served by its id either."""
    source = start_proxy(*SHARED)
    created = httpx.post(
        source.v1 + "/responses",
        json={"model": "gpt-4o-mini", "input": "Carry me over."},
        headers={"Authorization": "Bearer sk-alice"},
        timeout=10,
    ).json()
    line = orjson.loads(admin_get(source, "/admin/export").content)
    line["stored_at"] = time.time() - 3600
    target = start_proxy(*SHARED, "--cache-mode", "replay", "--ttl", "60")
    imported = httpx.post(
        target.url + "/admin/import", content=orjson.dumps(line), headers=ADMIN, timeout=10
    )
    assert imported.json() == {"imported": 1}
    fetched = httpx.get(
        f"{target.v1}/responses/{created['id']}",
        headers={"Authorization": "Bearer sk-alice"},
        timeout=10,
    )
    assert (fetched.status_code, fetched.json()["error"]["code"]) == (504, "cache_miss")
