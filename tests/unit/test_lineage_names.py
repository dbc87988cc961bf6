"""The names models' fingerprints are tracked under (`routes.lineage`): one per model and
route family, never another model's, and read back by `routes.model_of`."""

from __future__ import annotations

from typing import cast

import orjson
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from proxy.core import routes
from proxy.core.policy import FingerprintPolicy
from proxy.metrics import Metrics
from proxy.server.fingerprints import FingerprintTracker
from proxy.server.probe import Prober
from proxy.store.memory import MemoryStore
from proxy.upstream.client import Upstream

ROUTES = [
    routes.CHAT,
    routes.COMPLETIONS,
    routes.RESPONSES,
    routes.EMBEDDINGS,
    routes.AZURE_V1 + "chat/completions",
    routes.AZURE_V1 + "embeddings",
    routes.AZURE_RESPONSES,
]
FAMILIES = {routes.CHAT: "chat", routes.COMPLETIONS: "chat"}
"""Chat and completions share a model's history; the Responses API and embeddings each keep one."""

SUFFIXES = ["", "@", "@@", "@embeddings", "@responses", "@embeddings@", "@responses@embeddings"]
names = st.builds(
    str.__add__,
    st.text(alphabet="ax@", max_size=4),
    st.sampled_from(SUFFIXES),
)


def family(route: str) -> str:
    kind = routes.kind(route)
    return FAMILIES.get(kind, kind)


def test_a_chat_model_named_like_an_embeddings_lineage_is_tracked_apart() -> None:
    """Before: chat model `x@embeddings` was tracked as `x@embeddings`, embeddings model `x`'s
    lineage: each one's answers a rotation of the other's, one history shown for both."""
    chat = routes.lineage("x@embeddings", routes.CHAT)
    embeddings = routes.lineage("x", routes.EMBEDDINGS)
    assert embeddings == "x@embeddings"  # as documented, and as stores already hold it
    assert chat != embeddings
    completions = routes.lineage("x@responses", routes.COMPLETIONS)
    assert completions != routes.lineage("x", routes.RESPONSES)
    assert routes.model_of(chat) == "x@embeddings"


def test_requests_naming_no_model_are_tracked_apart_per_route_family() -> None:
    """A local server answers a chat or an embedding that names no model; both were tracked
    as "", each one's answers a rotation of the other's."""
    lineages = {routes.lineage("", route) for route in (routes.CHAT, routes.EMBEDDINGS)}
    assert lineages == {"", "@embeddings"}
    assert routes.lineage("", routes.RESPONSES) == "@responses"
    assert {routes.model_of(lineage) for lineage in lineages} == {""}


def test_names_that_end_in_no_mark_keep_the_lineage_stores_hold() -> None:
    assert routes.lineage("gpt-4o-mini", routes.CHAT) == "gpt-4o-mini"
    assert routes.lineage("claude-3-5-sonnet@20240620", routes.CHAT) == "claude-3-5-sonnet@20240620"
    assert routes.lineage("m", routes.RESPONSES) == "m@responses"
    assert routes.lineage("m", routes.COMPACT) == "m@compactions"
    assert routes.lineage("m", "/openai/v1/responses/compact") == "m@compactions"
    assert routes.lineage("m", routes.INPUT_TOKENS) == "m@input_tokens"
    assert routes.lineage("m@", routes.EMBEDDINGS) == "m@@embeddings"
    assert routes.lineage("", routes.CHAT) == ""
    assert routes.lineage("ignored", "/openai/deployments/dep-1/embeddings") == "dep-1@embeddings"


@given(names, st.sampled_from(ROUTES), names, st.sampled_from(ROUTES))
@example("x@embeddings", routes.CHAT, "x", routes.EMBEDDINGS)
@example("x@responses", routes.COMPLETIONS, "x", routes.RESPONSES)
@example("", routes.CHAT, "", routes.AZURE_RESPONSES)
def test_two_models_share_a_lineage_only_when_they_are_one_model_and_family(
    one: str, one_route: str, other: str, other_route: str
) -> None:
    same = routes.lineage(one, one_route) == routes.lineage(other, other_route)
    assert same == ((one, family(one_route)) == (other, family(other_route)))


@given(names, st.sampled_from(ROUTES))
@example("x@embeddings", routes.CHAT)
def test_model_of_reads_back_the_model_a_lineage_tracks(model: str, route: str) -> None:
    assert routes.model_of(routes.lineage(model, route)) == model


class ChatUpstream:
    """Answers every probe with a chat completion of fingerprint `fp_chat`."""

    async def fetch(
        self, method: str, route: str, headers: dict[str, str], body: bytes, limit: int
    ) -> tuple[int, bytes]:
        choice = {"index": 0, "message": {"role": "assistant", "content": "pong"}}
        answer = {"object": "chat.completion", "system_fingerprint": "fp_chat", "choices": [choice]}
        return 200, orjson.dumps(answer)


async def test_the_probe_tells_a_chat_model_from_an_embeddings_model_of_its_lineage() -> None:
    """Before: the probe keyed models by name and recorded what it learned under the name, so
    an embeddings answer of `x` made chat model `x@embeddings` look freshly answered, and a
    probe of that chat model taught embeddings `x` its fingerprint."""
    store = MemoryStore()
    metrics = Metrics(CollectorRegistry())
    policy = FingerprintPolicy.FOLLOW
    tracker = FingerprintTracker(store, metrics, policy, 0.0, lambda: 100.0, 60.0)
    upstream = cast(Upstream, ChatUpstream())
    prober = Prober(upstream, tracker, interval=1.0, api_key="sk-p", seed=0, clock=lambda: 100.0)
    prober.requested("x@embeddings", routes.CHAT)
    prober.answered(routes.lineage("x", routes.EMBEDDINGS))
    assert prober.due() == [("x@embeddings", routes.CHAT)]
    await prober.probe("x@embeddings", routes.CHAT)
    assert prober.due() == []
    assert await store.fingerprints("x@embeddings") is None
    learned = await store.fingerprints(routes.lineage("x@embeddings", routes.CHAT))
    assert learned is not None and learned.current == "fp_chat"
