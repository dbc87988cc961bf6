"""End to end: model labels are made only by requests that were served, so that callers the
upstream refuses cannot fill the label slots (MAX_MODELS) with names of their own; nor can a
client's deployment names or a hostile upstream's fingerprints grow the series."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import httpx
import orjson

from proxy.metrics import MAX_FINGERPRINTS, MAX_MODELS
from tests.e2e.test_e2e_observability import labels, series
from tests.fixtures_procs import ProxyFactory, Sim
from tests.hostile import Received, Scripted, http_answer

CHAT = "/v1/chat/completions"
GOOD_KEY = "sk-labels-good"
MADE_UP = [f"made-up-model-{n:03d}" for n in range(MAX_MODELS + 100)]


def body(model: str, prompt: str = "hi") -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": prompt}]})


async def post_all(url: str, key: str, models: list[str]) -> list[int]:
    """Every request, 20 at a time; the status of each."""
    limits = httpx.Limits(max_connections=20)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        answers = await asyncio.gather(
            *(client.post(url, content=body(m), headers=headers) for m in models)
        )
    return [a.status_code for a in answers]


def test_refused_requests_with_made_up_models_create_no_model_label(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    sim.accept_keys(GOOD_KEY)
    proxy = start_proxy()
    statuses = asyncio.run(post_all(proxy.url + CHAT, "sk-made-up", MADE_UP))
    assert statuses == [401] * len(MADE_UP)

    served = httpx.post(
        proxy.url + CHAT,
        content=body("gpt-legit"),
        headers={"Authorization": f"Bearer {GOOD_KEY}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert served.status_code == 200
    again = httpx.post(
        proxy.url + CHAT,
        content=body("gpt-legit"),
        headers={"Authorization": f"Bearer {GOOD_KEY}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert again.headers["X-Repro-Cache"] == "HIT"

    text = proxy.metrics()
    assert "made-up-model" not in text
    assert series(text, "repro_seed_injected_total") == {
        labels(model="other"): len(MADE_UP),
        labels(model="gpt-legit"): 2,
    }
    assert series(text, "repro_cache_misses_total")[labels(model="other")] == len(MADE_UP)
    assert series(text, "repro_cache_misses_total")[labels(model="gpt-legit")] == 1
    assert series(text, "repro_cache_hits_total")[labels(model="gpt-legit")] == 1


def test_azure_deployment_names_make_no_route_label(start_proxy: ProxyFactory, sim: Sim) -> None:
    """A deployment name is the client's to choose (any of 64 characters, each request a new
    one, a made-up key enough: the upstream's 404 or 401 is timed too); the route label is
    the route's pattern, never the path, so no caller can grow the series without limit."""
    sim.accept_keys("az-good")
    proxy = start_proxy(upstream=sim.url)
    headers = {"api-key": "az-made-up", "Content-Type": "application/json"}
    deployments = [f"made-up-dep-{n:03d}" for n in range(20)]
    for deployment in deployments:
        answer = httpx.post(
            f"{proxy.url}/openai/deployments/{deployment}/chat/completions?api-version=2024-10-21",
            content=body("gpt-x"),
            headers=headers,
            timeout=10,
        )
        assert answer.status_code == 401
    text = proxy.metrics()
    assert "made-up-dep" not in text
    pattern = "/openai/deployments/{deployment}/chat/completions"
    upstream = series(text, "repro_upstream_duration_seconds_count")
    assert sum(v for k, v in upstream.items() if ("route", pattern) in k) == len(deployments)


def fingerprint_per_answer() -> Callable[[asyncio.StreamWriter, Received], Awaitable[None]]:
    """A hostile upstream: every answer names a fingerprint never seen before."""
    numbers = itertools.count()

    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        answer = {
            "object": "chat.completion",
            "system_fingerprint": f"fp_hostile_{next(numbers):05d}",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        writer.write(http_answer(orjson.dumps(answer), "Content-Type: application/json"))
        await writer.drain()

    return write


def test_an_upstream_naming_a_new_fingerprint_per_answer_cannot_grow_the_series(
    start_proxy: ProxyFactory,
) -> None:
    """Fingerprints are the upstream's to name, and each new one becomes the model's current
    one: the fingerprint label values kept per model are bounded, the rest counted as `other`."""
    answers = MAX_FINGERPRINTS + 40
    with Scripted(fingerprint_per_answer()) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        prompts = [f"prompt {n}" for n in range(answers)]
        headers = {"Authorization": "Bearer sk-any", "Content-Type": "application/json"}
        with httpx.Client(timeout=10) as client:
            for prompt in prompts:
                sent = client.post(
                    proxy.v1 + "/chat/completions", content=body("gpt-x", prompt), headers=headers
                )
                assert sent.status_code == 200
        text = proxy.metrics()
    shown = series(text, "repro_fingerprint_info")
    assert len(shown) <= MAX_FINGERPRINTS + 1
    assert shown[labels(model="gpt-x", fingerprint="other")] == 1
    assert proxy.metric("repro_fingerprint_changes_total", model="gpt-x") == answers - 1


def test_an_upstream_answering_with_made_up_statuses_cannot_grow_the_series(
    start_proxy: ProxyFactory,
) -> None:
    """The status is the upstream's to choose: the upstream histogram names those HTTP names,
    and gives any other its class (`4xx`), so that a new number per answer adds no series."""
    statuses = itertools.count(431)

    async def made_up_status(writer: asyncio.StreamWriter, _: Received) -> None:
        status = next(statuses)
        error = orjson.dumps({"error": {"message": "no", "type": "x", "code": None}})
        head = f"{status} Whatever"
        writer.write(http_answer(error, "Content-Type: application/json", status=head))
        await writer.drain()

    with Scripted(made_up_status) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        headers = {"Authorization": "Bearer sk-any", "Content-Type": "application/json"}
        with httpx.Client(timeout=10) as client:
            got = [
                client.post(proxy.url + CHAT, content=body("gpt-x", f"p{n}"), headers=headers)
                for n in range(40)
            ]
        text = proxy.metrics()
    assert {answer.status_code for answer in got} == set(range(431, 471))
    counts = series(text, "repro_upstream_duration_seconds_count")
    assert {dict(key)["status"] for key in counts} == {"431", "451", "4xx"}
    assert sum(counts.values()) == 40


def test_a_served_model_named_with_control_characters_is_labelled_other(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """An upstream serving any model name (a local server) served `d\\x1b[2J`: /metrics wrote
    the escape as it is, to the terminal of whoever ran curl on it, and an alert's summary
    quotes the label to whoever is on call."""
    proxy = start_proxy()
    names = ["d\x1b[2J\x1b]0;pwn\x07", "c\u202ename", "e\rX", "f\u200bzero-width"]
    headers = {"Authorization": f"Bearer {GOOD_KEY}", "Content-Type": "application/json"}
    for name in names:
        for expected in ("MISS", "HIT"):
            answer = httpx.post(proxy.url + CHAT, content=body(name), headers=headers, timeout=10)
            assert answer.headers["X-Repro-Cache"] == expected
    raw = httpx.get(proxy.url + "/metrics", timeout=10).content
    assert not any(c in raw.decode() for c in "\x1b\x07\r\u202e\u200b")
    assert series(raw.decode(), "repro_cache_hits_total") == {labels(model="other"): len(names)}
