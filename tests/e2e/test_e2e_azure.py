"""Azure OpenAI end to end: the SDK's `AzureOpenAI` client and `OpenAI(base_url=…/openai/v1)`
-> proxy (`--upstream` the resource root, no /v1) -> the sim, which serves Azure's paths.

Per-deployment and /openai/v1 routes are cached like their OpenAI counterparts, with the
deployment and the api-version in the key and the `api-key` header as the tenant's credential.
Paths that could name two deployments at once, and repeated or oversized api-versions, are
refused before anything reaches the upstream.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from openai import AsyncAzureOpenAI, AzureOpenAI, OpenAI

from tests.fixtures_procs import (
    AZURE_VERSION,
    Proxy,
    ProxyFactory,
    Sim,
    azure_client,
    closed_after_test,
    raw_answer,
)

VERSION = AZURE_VERSION
MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture
def azure(start_proxy: ProxyFactory, sim: Sim) -> Proxy:
    return start_proxy(upstream=sim.url)


def upstream(sim: Sim) -> list[dict[str, Any]]:
    return sim.llm_requests()


def test_azure_chat_is_a_miss_then_a_hit_with_the_seed_injected(
    azure: Proxy, sim: Sim, ns: str
) -> None:
    client = azure_client(azure, ns)
    runs = [
        client.chat.completions.with_raw_response.create(model="chat-dep", messages=MESSAGES)  # type: ignore[arg-type]
        for _ in range(2)
    ]
    assert [r.headers["X-Repro-Cache"] for r in runs] == ["MISS", "HIT"]
    assert runs[0].headers["X-Repro-Seed"] == "12345"
    assert runs[0].headers["X-Repro-Fingerprint"] == "fp_sim_0001"
    assert runs[1].parse().choices[0].message.content == runs[0].parse().choices[0].message.content
    (sent,) = upstream(sim)
    assert sent["path"] == "/openai/deployments/chat-dep/chat/completions"
    assert sent["query"] == f"api-version={VERSION}"
    assert sent["headers"]["api-key"] == "az-key"
    assert orjson.loads(sent["body"])["seed"] == 12345


def test_the_deployment_the_api_version_and_the_api_key_each_partition_the_cache(
    azure: Proxy, sim: Sim, ns: str
) -> None:
    def ask(client: AzureOpenAI, deployment: str) -> str:
        raw = client.chat.completions.with_raw_response.create(model=deployment, messages=MESSAGES)  # type: ignore[arg-type]
        assert raw.headers["X-Repro-Cache"] == "MISS"
        return str(raw.headers["X-Repro-Key"])

    keys = {
        ask(azure_client(azure, ns), "dep-a"),
        ask(azure_client(azure, ns), "dep-b"),
        ask(azure_client(azure, ns, version="2025-01-01-preview"), "dep-a"),
        ask(azure_client(azure, ns, key="az-other-tenant"), "dep-a"),
    }
    assert len(keys) == 4 and len(upstream(sim)) == 4


def test_azure_embeddings_are_cached_without_a_seed(azure: Proxy, sim: Sim, ns: str) -> None:
    client = azure_client(azure, ns)
    runs = [client.embeddings.with_raw_response.create(model="emb", input="x") for _ in range(2)]
    assert [r.headers["X-Repro-Cache"] for r in runs] == ["MISS", "HIT"]
    assert "seed" not in orjson.loads(upstream(sim)[0]["body"])


async def test_async_azure_chat_stream_is_replayed(azure: Proxy, sim: Sim, ns: str) -> None:
    async with AsyncAzureOpenAI(
        azure_endpoint=azure.url,
        api_version=VERSION,
        api_key="az-key",
        max_retries=0,
        default_headers={"X-Repro-Namespace": ns},
    ) as client:
        runs = []
        for _ in range(2):
            raw = await client.chat.completions.with_raw_response.create(
                model="chat-dep",
                messages=MESSAGES,  # type: ignore[arg-type]
                stream=True,
            )
            chunks = [c.to_dict() async for c in raw.parse()]
            runs.append((raw.headers["X-Repro-Cache"], chunks))
    assert [outcome for outcome, _ in runs] == ["MISS", "HIT"]
    assert runs[0][1] == runs[1][1]


def test_azure_responses_are_cached_and_get_no_seed(azure: Proxy, sim: Sim, ns: str) -> None:
    client = azure_client(azure, ns)
    runs = [client.responses.with_raw_response.create(model="dep", input="x") for _ in range(2)]
    assert [r.headers["X-Repro-Cache"] for r in runs] == ["MISS", "HIT"]
    assert runs[1].parse().output_text == runs[0].parse().output_text
    streams = []
    for _ in range(2):
        raw = client.responses.with_raw_response.create(model="dep", input="x", stream=True)
        streams.append((raw.headers["X-Repro-Cache"], [e.to_dict() for e in raw.parse()]))
    assert [outcome for outcome, _ in streams] == ["MISS", "HIT"]
    assert streams[0][1] == streams[1][1]
    assert streams[0][1][-1]["type"] == "response.completed"
    sent = upstream(sim)
    assert [r["path"] for r in sent] == ["/openai/responses"] * 2
    assert all("seed" not in orjson.loads(r["body"]) for r in sent)


def test_the_openai_v1_shape_is_cached_for_chat_and_responses(
    azure: Proxy, sim: Sim, ns: str
) -> None:
    client = closed_after_test(
        OpenAI(
            base_url=azure.url + "/openai/v1",
            api_key="az-key",
            max_retries=0,
            default_headers={"X-Repro-Namespace": ns},
        )
    )
    chats = [
        client.chat.completions.with_raw_response.create(model="dep", messages=MESSAGES)  # type: ignore[arg-type]
        for _ in range(2)
    ]
    answers = [client.responses.with_raw_response.create(model="dep", input="x") for _ in range(2)]
    assert [r.headers["X-Repro-Cache"] for r in chats + answers] == ["MISS", "HIT", "MISS", "HIT"]
    assert chats[0].headers["X-Repro-Seed"] == "12345"
    assert [r["path"] for r in upstream(sim)] == [
        "/openai/v1/chat/completions",
        "/openai/v1/responses",
    ]
    assert azure.metric("repro_requests_total", route="/openai/v1/responses", cache="hit") == 1


def test_other_openai_paths_pass_through(azure: Proxy, sim: Sim) -> None:
    response = httpx.get(azure.url + "/openai/models?api-version=1", headers={"api-key": "k"})
    assert response.headers["X-Repro-Cache"] == "BYPASS"
    assert response.status_code == 200  # the upstream's own list, as Azure serves it
    assert response.json()["object"] == "list"
    assert sim.requests()[-1]["path"] == "/openai/models"


def raw_request(proxy: Proxy, target: str) -> tuple[int, bytes, bytes]:
    """One request sent byte for byte (clients normalise dot segments away)."""
    body = orjson.dumps({"messages": MESSAGES})
    head = (
        f"POST {target} HTTP/1.1\r\nHost: localhost\r\napi-key: k\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return raw_answer(proxy.port, head + body)


@pytest.mark.parametrize(
    "target",
    [
        "/openai/deployments/../deployments/dep/chat/completions?api-version=1",
        "/openai/deployments/..%2F..%2Fv1/chat/completions?api-version=1",
        "/openai/deployments/a%2Fb/chat/completions?api-version=1",
        "/openai/deployments/%2e%2e/chat/completions?api-version=1",
        "/openai/deployments/dep/chat/completions?api-version=1&api-version=2",
        "/openai/deployments/dep/chat/completions?api-version=" + "9" * 6000,
        "/openai/v1/chat/completions?api-version=a&api-version=b",
    ],
)
def test_hostile_azure_targets_are_refused_or_never_cached(
    azure: Proxy, sim: Sim, target: str
) -> None:
    """Refused before the upstream, or (a dot segment that resolves within /openai/) passed
    through uncached with the dots resolved, as any pass-through path is: never keyed under a
    deployment the upstream would read differently."""
    status, head, body = raw_request(azure, target)
    if status == 400:
        assert orjson.loads(body)["error"]["code"] in ("invalid_path", "invalid_value")
        assert sim.requests() == []
        return
    assert b"X-Repro-Cache: BYPASS" in head and b"X-Repro-Key" not in head
    for seen in sim.requests():
        assert ".." not in seen["path"] and "%2" not in seen["path"].lower()
