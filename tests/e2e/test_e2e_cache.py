"""End to end through the official OpenAI SDK: seed policy, HITs, keys, Cache-Control, modes."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI

from tests.fixtures_procs import Proxy, ProxyFactory, Sim

MESSAGES = [{"role": "user", "content": "Say something reproducible."}]


def client(proxy: Proxy, key: str = "sk-alice", **headers: str) -> OpenAI:
    return OpenAI(base_url=proxy.v1, api_key=key, max_retries=0, default_headers=headers or None)


def chat(
    proxy: Proxy, key: str = "sk-alice", headers: dict[str, str] | None = None, **params: Any
) -> Any:
    params.setdefault("model", "gpt-4o-mini")
    params.setdefault("messages", MESSAGES)
    with client(proxy, key) as sdk:  # closed here: a client left to the GC may warn of its socket
        return sdk.chat.completions.with_raw_response.create(extra_headers=headers or {}, **params)


def raw_post(
    proxy: Proxy, body: bytes, path: str = "/chat/completions", **headers: str
) -> httpx.Response:
    headers.setdefault("Authorization", "Bearer sk-alice")
    headers.setdefault("Content-Type", "application/json")
    return httpx.post(proxy.v1 + path, content=body, headers=headers, timeout=10)


def upstream_bodies(sim: Sim) -> list[dict[str, Any]]:
    return [orjson.loads(r["body"]) for r in sim.llm_requests()]


def test_default_seed_injected_and_second_call_is_a_hit(proxy: Proxy, sim: Sim) -> None:
    first = chat(proxy)
    second = chat(proxy)
    assert first.headers["X-Repro-Cache"] == "MISS"
    assert second.headers["X-Repro-Cache"] == "HIT"
    assert first.headers["X-Repro-Seed"] == "12345"
    assert first.headers["X-Repro-Seed-Source"] == "default"
    assert first.headers["X-Repro-Fingerprint"] == "fp_sim_0001"
    assert second.headers["X-Repro-Key"] == first.headers["X-Repro-Key"]
    assert second.headers["Age"] == "0"
    assert second.http_response.content == first.http_response.content
    assert [b["seed"] for b in upstream_bodies(sim)] == [12345]


def test_client_seed_is_kept(proxy: Proxy, sim: Sim) -> None:
    response = chat(proxy, seed=7)
    assert response.headers["X-Repro-Seed"] == "7"
    assert response.headers["X-Repro-Seed-Source"] == "client"
    assert upstream_bodies(sim)[0]["seed"] == 7


def test_strict_forces_temperature_and_top_p(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy("--enforce", "strict")
    chat(proxy, temperature=0.9, top_p=0.5)
    body = upstream_bodies(sim)[0]
    assert (body["temperature"], body["top_p"], body["seed"]) == (0, 1, 12345)


def test_enforce_off_forwards_the_body_as_is(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy("--enforce", "off")
    raw = b'{ "messages": [{"role": "user", "content": "x"}], "model": "m", "temperature": 0.70 }'
    response = raw_post(proxy, raw)
    assert response.status_code == 200
    assert "X-Repro-Seed" not in response.headers
    assert sim.llm_requests()[0]["body"] == raw.decode()


def test_spelling_variants_share_a_key_and_reach_upstream_identically(
    proxy: Proxy, sim: Sim
) -> None:
    variants = [
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":0.7}',
        b'{ "temperature": 0.70, "messages": [ {"content": "x", "role": "user"} ], "model": "m" }',
        b'{"temperature":7e-1,"model":"m","messages":[{"role":"user","content":"x"}]}',
    ]
    keys = set()
    for body in variants:
        response = raw_post(proxy, body, **{"Cache-Control": "no-cache"})
        assert response.status_code == 200
        keys.add(response.headers["X-Repro-Key"])
    assert len(keys) == 1
    sent = {r["body"] for r in sim.llm_requests()}
    assert len(sent) == 1
    assert sent.pop() == (
        '{"messages":[{"content":"x","role":"user"}],"model":"m","seed":12345,"temperature":0.7}'
    )


def test_default_valued_parameters_share_the_key_but_are_not_added(proxy: Proxy, sim: Sim) -> None:
    plain = chat(proxy)
    explicit = chat(proxy, temperature=1, top_p=1, presence_penalty=0, frequency_penalty=0)
    assert explicit.headers["X-Repro-Cache"] == "HIT"
    assert explicit.headers["X-Repro-Key"] == plain.headers["X-Repro-Key"]
    assert set(upstream_bodies(sim)[0]) == {"messages", "model", "seed"}
    # Not `n`: newer chat models refuse it given, even 1, and answer it left out.
    assert chat(proxy, n=1).headers["X-Repro-Cache"] == "MISS"


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o"},
        {"messages": [{"role": "user", "content": "Something else."}]},
        {"seed": 1},
        {"temperature": 0.5},
        {"top_p": 0.9},
        {"max_tokens": 5},
        {"max_completion_tokens": 5},
        {"n": 2},
        {"stop": ["\n"]},
        {"logprobs": True},
        {"presence_penalty": 0.5},
        {"response_format": {"type": "json_object"}},
        {
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            ],
            "tool_choice": "auto",
        },
    ],
)
def test_anything_that_changes_the_output_changes_the_key(
    proxy: Proxy, change: dict[str, Any]
) -> None:
    base = chat(proxy)
    changed = chat(proxy, **change)
    assert changed.headers["X-Repro-Key"] != base.headers["X-Repro-Key"]
    assert changed.headers["X-Repro-Cache"] == "MISS"


def test_namespace_and_scope_partition_the_cache(proxy: Proxy) -> None:
    alice = chat(proxy, key="sk-alice")
    keys = {
        alice.headers["X-Repro-Key"],
        chat(proxy, key="sk-bob").headers["X-Repro-Key"],
        chat(proxy, key="sk-alice", headers={"X-Repro-Namespace": "suite-a"}).headers[
            "X-Repro-Key"
        ],
    }
    assert len(keys) == 3
    assert chat(proxy, key="sk-bob").headers["X-Repro-Cache"] == "HIT"
    assert chat(proxy, key="sk-carol").headers["X-Repro-Cache"] == "MISS"


def test_x_repro_headers_are_not_forwarded(proxy: Proxy, sim: Sim) -> None:
    chat(proxy, headers={"X-Repro-Namespace": "n1", "X-Other": "kept"})
    headers = {k.lower() for k in sim.llm_requests()[0]["headers"]}
    assert "x-other" in headers
    assert not any(h.startswith("x-repro-") for h in headers)


def test_shared_scope_serves_every_key(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy("--cache-scope", "shared")
    chat(proxy, key="sk-alice")
    assert chat(proxy, key="sk-bob").headers["X-Repro-Cache"] == "HIT"


def test_no_key_is_anonymous_and_the_upstream_401_is_not_cached(proxy: Proxy, sim: Sim) -> None:
    chat(proxy, key="sk-alice")
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES})
    for _ in range(2):
        response = httpx.post(
            proxy.v1 + "/chat/completions",
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=5,
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert len(sim.llm_requests()) == 3


def test_cache_control_directives(proxy: Proxy, sim: Sim) -> None:
    miss = raw_post(
        proxy,
        orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}),
        **{"Cache-Control": "only-if-cached"},
    )
    assert miss.status_code == 504
    assert chat(proxy).headers["X-Repro-Cache"] == "MISS"
    assert (
        chat(proxy, headers={"Cache-Control": "only-if-cached"}).headers["X-Repro-Cache"] == "HIT"
    )
    refreshed = chat(proxy, headers={"Cache-Control": "no-cache"})
    assert refreshed.headers["X-Repro-Cache"] == "REFRESH"
    hit = chat(proxy)
    assert hit.http_response.content == refreshed.http_response.content
    bypass = chat(proxy, headers={"Cache-Control": "no-store"})
    assert bypass.headers["X-Repro-Cache"] == "BYPASS"
    assert chat(proxy).http_response.content == refreshed.http_response.content
    assert chat(proxy, headers={"Cache-Control": "max-age=3600"}).headers["X-Repro-Cache"] == "HIT"
    assert len(sim.llm_requests()) == 3


def test_only_if_cached_miss_is_a_cache_miss_error(proxy: Proxy, sim: Sim) -> None:
    response = raw_post(
        proxy, b'{"model":"m","messages":[]}', **{"Cache-Control": "only-if-cached"}
    )
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "cache_miss"
    assert response.headers["X-Repro-Key"] in error["message"]
    assert sim.llm_requests() == []


def test_replay_mode_never_calls_upstream(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy("--cache-mode", "replay")
    response = raw_post(proxy, orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}))
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "cache_miss"
    assert sim.llm_requests() == []


def test_record_mode_always_refreshes(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy("--cache-mode", "record")
    assert chat(proxy).headers["X-Repro-Cache"] == "REFRESH"
    assert chat(proxy).headers["X-Repro-Cache"] == "REFRESH"
    assert (
        chat(proxy, headers={"Cache-Control": "only-if-cached"}).headers["X-Repro-Cache"] == "HIT"
    )
    assert len(sim.llm_requests()) == 2


def test_cache_mode_off_bypasses(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy("--cache-mode", "off")
    assert chat(proxy).headers["X-Repro-Cache"] == "BYPASS"
    assert chat(proxy).headers["X-Repro-Cache"] == "BYPASS"
    assert len(sim.llm_requests()) == 2


def test_completions_and_embeddings_are_cached(proxy: Proxy, sim: Sim) -> None:
    with client(proxy) as sdk:
        for _ in range(2):
            completion = sdk.completions.with_raw_response.create(model="davinci-002", prompt="Hi")
            embedding = sdk.embeddings.with_raw_response.create(
                model="text-embedding-3-small", input="Hi"
            )
    assert completion.headers["X-Repro-Cache"] == "HIT"
    assert embedding.headers["X-Repro-Cache"] == "HIT"
    assert "X-Repro-Seed" not in embedding.headers
    bodies = upstream_bodies(sim)
    assert len(bodies) == 2
    assert bodies[0]["seed"] == 12345
    assert "seed" not in bodies[1]


def test_unseeded_upstream_answers_differ_but_the_proxy_makes_them_stable(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    with OpenAI(base_url=sim.v1, api_key="sk-alice", max_retries=0) as direct:
        texts = {
            direct.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content
            for _ in range(3)
        }
    assert len(texts) > 1
    proxy = start_proxy("--cache-mode", "record")
    seeded = {chat(proxy).parse().choices[0].message.content for _ in range(3)}
    assert len(seeded) == 1


def test_per_attempt_sdk_headers_never_change_the_key(proxy: Proxy) -> None:
    first = chat(proxy, headers={"x-stainless-retry-count": "0", "x-stainless-read-timeout": "600"})
    retried = chat(proxy, headers={"x-stainless-retry-count": "2", "x-stainless-read-timeout": "5"})
    assert retried.headers["X-Repro-Key"] == first.headers["X-Repro-Key"]
    assert retried.headers["X-Repro-Cache"] == "HIT"
