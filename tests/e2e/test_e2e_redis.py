"""End to end on a shared Redis (standalone and Cluster): several proxy processes, one cache.

Each test starts real `repro-proxy serve` processes on the session's redis-server (flushed per
test) or three-node cluster, against the simulated upstream, and talks to them with the official
OpenAI SDK.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import httpx
import pytest
import redis
from openai import OpenAI

from bench.procs import wait_until
from tests.fixtures_procs import Proxy, ProxyFactory, Sim, free_port
from tests.fixtures_redis import RedisClusterNodes, RedisServer

MODEL = "gpt-4o-mini"
PROMPT = "Say something reproducible."
OTHER_PROMPT = "Teach the proxy the new fingerprint."
FP1, FP2 = "fp_sim_0001", "fp_sim_0002"
ADMIN = "admin-token-for-tests"


def start_pair(start_proxy: ProxyFactory, *flags: str) -> tuple[Proxy, Proxy]:
    """Two proxies with the same flags, started side by side."""
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: start_proxy(*flags), range(2))
    return a, b


def chat(proxy: Proxy, prompt: str = PROMPT, key: str = "sk-alice", **params: Any) -> Any:
    """One chat completion through the SDK; the raw response, body already read."""
    with OpenAI(base_url=proxy.v1, api_key=key, max_retries=0) as sdk:
        return sdk.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], **params
        )


def outcome(response: Any) -> tuple[str, str]:
    return response.headers["X-Repro-Cache"], response.headers["X-Repro-Fingerprint"]


def admin_fingerprints(proxy: Proxy) -> Any:
    response = httpx.get(
        proxy.url + "/admin/fingerprints", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5
    )
    assert response.status_code == 200
    return response.json()


def redis_contents(client: redis.Redis) -> Iterator[tuple[bytes, list[bytes]]]:
    """Every key of one server with everything stored under it (hash fields and values too)."""
    for name in client.scan_iter(count=1000):
        kind = client.type(name)
        if kind == b"string":
            parts = [cast(bytes, client.get(name))]
        elif kind == b"hash":
            fields = cast(dict[bytes, bytes], client.hgetall(name))
            parts = [*fields, *fields.values()]
        elif kind == b"set":
            parts = list(cast(set[bytes], client.smembers(name)))
        else:
            pytest.fail(f"unexpected Redis type {kind!r} under {name!r}")
        yield name, parts


def cluster_key_names(cluster: RedisClusterNodes) -> list[bytes]:
    names: list[bytes] = []
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as client:
            names += client.scan_iter(count=1000)
    return names


# --- standalone Redis ------------------------------------------------------------------------


def test_two_proxies_with_one_secret_share_entries_and_fingerprints(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str
) -> None:
    a, b = start_pair(
        start_proxy, "--store", redis_url, "--secret", "s3-sixteen-bytes", "--admin-token", ADMIN
    )
    miss = chat(a)
    hit = chat(b)
    assert outcome(miss) == ("MISS", FP1)
    assert outcome(hit) == ("HIT", FP1)
    assert hit.headers["X-Repro-Key"] == miss.headers["X-Repro-Key"]
    assert hit.http_response.content == miss.http_response.content
    # The upstream rotates; a MISS through A teaches the shared store the new fingerprint, so
    # B no longer serves the entry stored before the rotation (policy follow).
    sim.set_fingerprint(FP2)
    assert outcome(chat(a, OTHER_PROMPT)) == ("MISS", FP2)
    after = chat(b)
    assert outcome(after) == ("MISS", FP2)
    assert after.http_response.content != miss.http_response.content
    again = chat(a)
    assert outcome(again) == ("HIT", FP2)
    assert again.http_response.content == after.http_response.content
    state = admin_fingerprints(b)
    assert list(state) == [MODEL]
    assert state[MODEL]["current"] == FP2
    assert [item["fingerprint"] for item in state[MODEL]["history"]] == [FP1, FP2]
    assert len(sim.llm_requests()) == 3
    ready = httpx.get(a.url + "/readyz", timeout=5)
    assert (ready.status_code, ready.json()) == (200, {"status": "ok"})


def test_every_replica_reports_the_current_fingerprint(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str
) -> None:
    """repro_fingerprint_info is per process: each replica must show what it has seen itself."""
    a, b = start_pair(start_proxy, "--store", redis_url)
    assert outcome(chat(a)) == ("MISS", FP1)
    assert outcome(chat(b, OTHER_PROMPT)) == ("MISS", FP1)
    assert a.metric("repro_fingerprint_info", model=MODEL, fingerprint=FP1) == 1
    assert b.metric("repro_fingerprint_info", model=MODEL, fingerprint=FP1) == 1
    sim.set_fingerprint(FP2)
    assert outcome(chat(a, "A third question.")) == ("MISS", FP2)
    assert outcome(chat(b)) == ("MISS", FP2)
    for proxy in (a, b):
        assert proxy.metric("repro_fingerprint_info", model=MODEL, fingerprint=FP1) == 0
        assert proxy.metric("repro_fingerprint_info", model=MODEL, fingerprint=FP2) == 1
    assert a.metric("repro_fingerprint_changes_total", model=MODEL) == 1
    assert b.metric("repro_fingerprint_changes_total", model=MODEL) == 0


def test_without_a_secret_the_one_kept_in_the_store_is_shared(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str
) -> None:
    a, b = start_pair(start_proxy, "--store", redis_url)
    miss = chat(a)
    hit = chat(b)
    assert outcome(hit) == ("HIT", FP1)
    assert hit.headers["X-Repro-Key"] == miss.headers["X-Repro-Key"]
    assert hit.http_response.content == miss.http_response.content
    other_key = chat(b, key="sk-bob")
    assert other_key.headers["X-Repro-Cache"] == "MISS"
    assert other_key.headers["X-Repro-Key"] != miss.headers["X-Repro-Key"]
    assert len(sim.llm_requests()) == 2


def test_ttl_expires_entries_in_redis(start_proxy: ProxyFactory, redis_url: str) -> None:
    proxy = start_proxy("--store", redis_url, "--ttl", "1")
    first = chat(proxy)
    assert first.headers["X-Repro-Cache"] == "MISS"
    key = first.headers["X-Repro-Key"].encode()
    with redis.Redis.from_url(redis_url) as client:
        names = [name for name in client.scan_iter(count=1000) if key in name]
        assert len(names) == 1
        assert 0 < client.pttl(names[0]) <= 1000
        assert chat(proxy).headers["X-Repro-Cache"] == "HIT"
        wait_until(lambda: client.exists(names[0]) == 0, "Redis expiring the entry", 3.0)
        assert chat(proxy).headers["X-Repro-Cache"] == "MISS"
        assert 0 < client.pttl(names[0]) <= 1000


def test_redis_never_holds_the_api_key_and_no_key_name_holds_the_prompt(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    api_key = "sk-test-Zq8vLr3-never-in-redis"
    prompt = "Explain the vermilion-okapi-5521 ritual in one line."
    proxy = start_proxy("--store", redis_url)
    answers = [chat(proxy, prompt, key=api_key) for _ in range(2)]
    with OpenAI(base_url=proxy.v1, api_key=api_key, max_retries=0) as sdk:
        answers.append(sdk.completions.with_raw_response.create(model="davinci-002", prompt=prompt))
        answers.append(
            sdk.embeddings.with_raw_response.create(model="text-embedding-3-small", input=prompt)
        )
    assert [a.headers["X-Repro-Cache"] for a in answers] == ["MISS", "HIT", "MISS", "MISS"]
    # The simulated upstream does not echo prompts. Values keep the request each answer was
    # made for (cassettes need it; --encryption-key seals it); key names never hold prompt text.
    assert not any(prompt.encode() in a.http_response.content for a in answers)
    with redis.Redis.from_url(redis_url) as client:
        contents = list(redis_contents(client))
    assert len(contents) >= 3
    for name, parts in contents:
        assert b"vermilion-okapi" not in name
        for blob in (name, *parts):
            assert api_key.encode() not in blob, name


def test_unreachable_redis_is_unready_and_requests_fail_open(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy("--store", f"redis://127.0.0.1:{free_port()}/0")
    ready = httpx.get(proxy.url + "/readyz", timeout=5)
    assert ready.status_code == 503
    body = ready.json()
    assert set(body) == {"status", "reason"}
    assert body["status"] == "unavailable"
    assert isinstance(body["reason"], str) and body["reason"]
    for _ in range(2):
        response = chat(proxy)
        assert response.http_response.status_code == 200
        assert outcome(response) == ("MISS", FP1)
        assert response.parse().choices[0].message.content
    assert len(sim.llm_requests()) == 2
    # Per request: the lookup (fingerprint state and entry in one round trip) fails, then the
    # fingerprint of the fresh answer and its write fail too.
    assert proxy.store_errors() == {"get": 2.0, "fingerprint": 2.0, "put": 2.0}
    assert httpx.get(proxy.url + "/healthz", timeout=5).status_code == 200


def test_admin_fingerprints_with_the_store_down_is_a_503(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy("--store", f"redis://127.0.0.1:{free_port()}/0", "--admin-token", ADMIN)
    response = httpx.get(
        proxy.url + "/admin/fingerprints", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5
    )
    assert response.status_code == 503
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]


# --- Redis Cluster ---------------------------------------------------------------------------


def test_cluster_one_proxy_then_two_share_entries_secret_and_fingerprints(
    start_proxy: ProxyFactory, sim: Sim, redis_cluster: RedisClusterNodes, redis_cluster_url: str
) -> None:
    a, b = start_pair(start_proxy, "--store", redis_cluster_url, "--admin-token", ADMIN)
    miss = chat(a)
    hit = chat(a)
    assert outcome(miss) == ("MISS", FP1)
    assert outcome(hit) == ("HIT", FP1)
    assert hit.http_response.content == miss.http_response.content
    key = miss.headers["X-Repro-Key"].encode()
    assert len([name for name in cluster_key_names(redis_cluster) if key in name]) == 1
    across = chat(b)
    assert outcome(across) == ("HIT", FP1)
    assert across.headers["X-Repro-Key"] == miss.headers["X-Repro-Key"]
    assert across.http_response.content == miss.http_response.content
    sim.set_fingerprint(FP2)
    assert outcome(chat(a, OTHER_PROMPT)) == ("MISS", FP2)
    assert outcome(chat(b)) == ("MISS", FP2)
    assert outcome(chat(a)) == ("HIT", FP2)
    state = admin_fingerprints(b)
    assert state[MODEL]["current"] == FP2
    assert [item["fingerprint"] for item in state[MODEL]["history"]] == [FP1, FP2]
    assert len(sim.llm_requests()) == 3
    ready = httpx.get(b.url + "/readyz", timeout=5)
    assert (ready.status_code, ready.json()) == (200, {"status": "ok"})


def test_replicas_share_one_secret_again_after_redis_lost_it(
    start_proxy: ProxyFactory, sim: Sim, redis_server: RedisServer, redis_url: str
) -> None:
    """Redis restarted empty (here FLUSHALL) while a replica runs, then another starts: the new
    one writes a secret of its own, and the two must come to share one cache again without a
    restart, rather than each missing the other's entries for as long as they run."""
    running = start_proxy("--store", redis_url)
    assert chat(running).headers["X-Repro-Cache"] == "MISS"
    redis_server.flushall()
    late = start_proxy("--store", redis_url)
    asked = itertools.count()

    def shared() -> bool:
        prompt = f"asked of the late replica {next(asked)}"
        stored = chat(late, prompt)
        served = chat(running, prompt)
        return bool(served.headers["X-Repro-Key"] == stored.headers["X-Repro-Key"])

    wait_until(shared, "the replicas sharing one secret", 20, pause=0.5)
    prompt = "asked once the replicas agree"
    assert chat(late, prompt).headers["X-Repro-Cache"] == "MISS"
    assert chat(running, prompt).headers["X-Repro-Cache"] == "HIT"
