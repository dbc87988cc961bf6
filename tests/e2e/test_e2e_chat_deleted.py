"""A chat completion made with `store: true` is kept by the upstream, which can update its
`metadata` (`POST /v1/chat/completions/{id}`) or delete it (`DELETE`). Through the proxy, either
forgets the stored answer that carries the id: before, a HIT of the request that made it still
handed out an id the upstream no longer had (a 404 to fetch), or the metadata it no longer
holds; now that request reaches the upstream again, as it would without the proxy."""

from __future__ import annotations

import httpx
import orjson
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.fixtures_procs import ProxyFactory, Sim, closed_after_test

WAIT = 10.0
AUTH = {"Authorization": "Bearer sk-alice"}
ASKED = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Hello."}],
    "store": True,
    "metadata": {"topic": "greeting"},
}


def id_of(answer: httpx.Response) -> str:
    """The completion's id: the object's, or a stream's first chunk's."""
    if answer.headers["Content-Type"].startswith("text/event-stream"):
        line = next(x for x in answer.text.splitlines() if x.startswith("data: "))
        return str(orjson.loads(line.removeprefix("data: "))["id"])
    return str(answer.json()["id"])


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("scope", ["key", "shared"])
@pytest.mark.parametrize("change", ["delete", "update"])
def test_a_changed_stored_chat_completion_is_not_served_again(
    start_proxy: ProxyFactory, sim: Sim, scope: str, change: str, stream: bool
) -> None:
    proxy = start_proxy("--cache-scope", scope)
    asked = {**ASKED, "stream": stream}

    def ask() -> httpx.Response:
        return httpx.post(proxy.v1 + "/chat/completions", json=asked, headers=AUTH, timeout=WAIT)

    first = ask()
    assert first.headers["X-Repro-Cache"] == "MISS"
    made = id_of(first)
    assert ask().headers["X-Repro-Cache"] == "HIT"

    url = f"{proxy.v1}/chat/completions/{made}"
    if change == "delete":
        assert httpx.delete(url, headers=AUTH, timeout=WAIT).status_code == 200
    else:
        renamed = {"metadata": {"topic": "renamed"}}
        assert httpx.post(url, json=renamed, headers=AUTH, timeout=WAIT).status_code == 200

    after = ask()
    assert after.headers["X-Repro-Cache"] == "MISS"  # was a HIT carrying the changed id
    assert id_of(after) != made
    assert httpx.get(f"{proxy.v1}/chat/completions/{id_of(after)}", headers=AUTH).is_success
    assert ask().headers["X-Repro-Cache"] == "HIT"  # the new one is cached as any answer


def test_a_failed_change_forgets_nothing(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy()

    def ask() -> httpx.Response:
        return httpx.post(proxy.v1 + "/chat/completions", json=ASKED, headers=AUTH, timeout=WAIT)

    ask()
    url = f"{proxy.v1}/chat/completions/chatcmpl-unknown"
    assert httpx.delete(url, headers=AUTH, timeout=WAIT).status_code == 404
    assert ask().headers["X-Repro-Cache"] == "HIT"


def test_the_sdks_update_and_delete_reach_the_upstream_and_forget(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """The official SDK's `chat.completions.update` and `.delete`, as an app calls them."""
    proxy = start_proxy()
    client = closed_after_test(
        OpenAI(base_url=proxy.v1, api_key="sk-alice", max_retries=0, timeout=WAIT)
    )
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi."}]

    def made() -> str:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, store=True, metadata={"topic": "a"}
        ).id

    first = made()
    assert made() == first  # a HIT
    assert client.chat.completions.update(first, metadata={"topic": "b"}).metadata == {"topic": "b"}
    second = made()
    assert second != first
    assert made() == second
    assert client.chat.completions.delete(second).deleted
    assert made() not in (first, second)
