"""A tenant whose requests a keyed header or query parameter routes to another fleet (another
fingerprint), against a real proxy: each routing keeps a fingerprint history of its own.

Before: a model's fingerprint state was one per model name, so under `follow` each answer of
the other fleet rotated the model's current fingerprint, and every tenant's stored answers of
the model became misses (in `key` scope too), one request per flip."""

from __future__ import annotations

import asyncio
import tempfile

import httpx
import orjson
import pytest
import redis

from bench.procs import settled
from tests.fixtures_procs import Proxy, ProxyFactory, Sim
from tests.hostile import Received, Scripted, http_answer

ADMIN = "admin-token-for-tests"
ALICE = {"Authorization": "Bearer sk-alice"}
MALLORY = {"Authorization": "Bearer sk-mallory"}
ROUTE_VALUE = "fleet-b-7f3a9c"
"""The routing value: distinctive, so that finding it in logs, metrics or admin output shows."""


async def _two_fleets(writer: asyncio.StreamWriter, request: Received) -> None:
    """Answers from fleet `fp_b` when a header or the query names ROUTE_VALUE, else `fp_a`;
    its model list (which a key check reads) to anyone."""
    if request.request_line.startswith("GET "):
        writer.write(http_answer(b'{"object": "list", "data": [{"id": "gpt-4o-mini"}]}'))
        await writer.drain()
        return
    target = request.request_line.split(" ")[1]
    routed = request.headers.get("x-provider") == ROUTE_VALUE or ROUTE_VALUE in target
    body = {
        "id": f"chatcmpl-{len(request.body)}",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_b" if routed else "fp_a",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"answer {len(request.body)}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    writer.write(http_answer(orjson.dumps(body), "Content-Type: application/json"))
    await writer.drain()


def _post(proxy: Proxy, text: str, headers: dict[str, str], query: str = "") -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    answer = httpx.post(
        f"{proxy.v1}/chat/completions{query}", json=body, headers=headers, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return answer


ROUTINGS = {
    "header": ({"x-provider": ROUTE_VALUE}, ""),
    "query": ({}, f"?provider={ROUTE_VALUE}"),
}


@pytest.mark.parametrize("scope", ["key", "shared"])
@pytest.mark.parametrize("routing", list(ROUTINGS))
def test_answers_of_another_fleet_neither_rotate_the_model_nor_show_their_routing(
    start_proxy: ProxyFactory, scope: str, routing: str
) -> None:
    headers, query = ROUTINGS[routing]
    with Scripted(_two_fleets) as upstream, tempfile.TemporaryFile() as logs:
        proxy = start_proxy(
            "--cache-scope", scope, "--admin-token", ADMIN, upstream=upstream.v1, stderr=logs
        )
        stored = _post(proxy, "alice asks", ALICE)
        assert stored.headers["X-Repro-Fingerprint"] == "fp_a"
        for text in ("one", "two", "one"):  # new answers of the other fleet, and a HIT of one
            own = _post(proxy, text, {**MALLORY, **headers}, query)
            assert own.headers["X-Repro-Fingerprint"] == "fp_b"
        assert own.headers["X-Repro-Cache"] == "HIT"  # the routed fleet's own state serves too
        again = _post(proxy, "alice asks", ALICE)
        assert (again.headers["X-Repro-Cache"], again.content) == ("HIT", stored.content)

        auth = {"Authorization": f"Bearer {ADMIN}"}
        admin = httpx.get(proxy.url + "/admin/fingerprints", headers=auth, timeout=5)
        states = admin.json()
        assert states["gpt-4o-mini"]["current"] == "fp_a"
        (routed,) = (name for name in states if name != "gpt-4o-mini")
        assert routed.startswith("gpt-4o-mini@fleet-")
        assert states[routed]["current"] == "fp_b"
        rotations = httpx.get(proxy.url + "/admin/rotations", headers=auth, timeout=5).json()
        assert all(model["rotations"] == [] for model in rotations["models"].values())
        assert proxy.metric("repro_fingerprint_changes_total", model="gpt-4o-mini") == 0
        metrics = httpx.get(proxy.url + "/metrics", timeout=5).text
        assert f'repro_fingerprint_info{{fingerprint="fp_b",model="{routed}"}} 1.0' in metrics
        logs.seek(0)
        for shown in (admin.text, repr(rotations), metrics, logs.read().decode()):
            assert ROUTE_VALUE not in shown


def test_the_api_version_of_an_azure_deployment_keeps_its_lineage(
    start_proxy: ProxyFactory,
) -> None:
    """`api-version` names the API, not who answers: a deployment's state stays under its
    name, as stores of earlier versions hold it."""
    with Scripted(_two_fleets) as upstream:
        proxy = start_proxy("--admin-token", ADMIN, upstream=f"http://127.0.0.1:{upstream.port}")
        body = {"messages": [{"role": "user", "content": "hi"}]}
        url = f"{proxy.url}/openai/deployments/dep-1/chat/completions?api-version=2024-10-21"
        answer = httpx.post(url, json=body, headers={"api-key": "k"}, timeout=10)
        assert answer.status_code == 200, answer.text
        auth = {"Authorization": f"Bearer {ADMIN}"}
        states = httpx.get(proxy.url + "/admin/fingerprints", headers=auth, timeout=5).json()
        assert sorted(states) == ["dep-1"]


def test_the_probe_asks_for_no_routed_request(start_proxy: ProxyFactory, sim: Sim) -> None:
    """The probe sends no client's headers, so it would ask the plain fleet: before, a routed
    request made it probe the model and teach the plain lineage, spending `--probe-key` on a
    fleet that request never reaches."""
    proxy = start_proxy("--probe-interval", "0.3", "--probe-key", "sk-probe")
    auth = {"Authorization": "Bearer sk-alice"}
    for model, headers in (("routed-model", {"x-provider": ROUTE_VALUE}), ("plain-model", {})):
        body = {"model": model, "messages": [{"role": "user", "content": "q"}]}
        answer = httpx.post(
            proxy.v1 + "/chat/completions", json=body, headers={**auth, **headers}, timeout=10
        )
        assert answer.status_code == 200, answer.text

    def probed() -> list[str]:
        return [
            orjson.loads(r["body"])["model"]
            for r in sim.llm_requests()
            if r["headers"].get("Authorization") == "Bearer sk-probe"
        ]

    assert settled(lambda: probed().count("plain-model"), lambda n: n >= 2) >= 2
    assert "routed-model" not in probed()


def test_replicas_sharing_redis_keep_each_fleet_apart_and_name_no_routing_value(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    """One replica's routed answers neither rotate the model for the other replica, nor put
    the routing value into a Redis key, hash field or set member (what the names show)."""
    with Scripted(_two_fleets) as upstream:
        one = start_proxy("--store", redis_url, upstream=upstream.v1)
        two = start_proxy("--store", redis_url, upstream=upstream.v1)
        stored = _post(one, "alice asks", ALICE)
        for text in ("one", "two"):
            routed = _post(two, text, {**MALLORY, "x-provider": ROUTE_VALUE})
            assert routed.headers["X-Repro-Fingerprint"] == "fp_b"
        for proxy in (one, two):
            again = _post(proxy, "alice asks", ALICE)
            assert (again.headers["X-Repro-Cache"], again.content) == ("HIT", stored.content)
    client = redis.Redis.from_url(redis_url)
    try:
        names = []
        for key in client.scan_iter(count=1000):
            names.append(key)
            kind = client.type(key)
            if kind == b"hash":
                names.extend(client.hkeys(key))
            elif kind == b"set":
                names.extend(client.smembers(key))
            elif kind == b"zset":
                names.extend(client.zrange(key, 0, -1))
    finally:
        client.close()
    assert names
    assert not [name for name in names if ROUTE_VALUE.encode() in name]
    assert any(b"gpt-4o-mini@fleet-" in name for name in names)  # the routed lineage is kept
