"""A request that keyed headers or query parameters route keeps its model's fingerprints under
a lineage of its own (`routes.fleet`): no other routing's, no other model's, and a plain
request's lineage as stores of earlier versions hold it."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry

from proxy.config import Settings
from proxy.core import routes
from proxy.core.call import Asked, prepare_with
from proxy.core.codec import Codec
from proxy.core.entry import Entry
from proxy.core.policy import CacheScope
from proxy.metrics import MAX_MODELS, MAX_ROUTED, OTHER, Metrics
from proxy.store import cassette
from proxy.store.memory import MemoryStore
from tests.unit.test_keyed import SDK
from tests.unit.test_lineage_names import ROUTES, family, names

RULES = Settings(upstream="http://127.0.0.1:9/v1")
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
FLEETS = ["", routes.fleet("a" * 64, ""), routes.fleet("", "provider=b")]


def lineage_of(pairs: list[tuple[str, str]], query: str = "", rules: Settings = RULES) -> str:
    headers = CIMultiDictProxy(CIMultiDict(pairs))
    return prepare_with(rules, "tenant", Asked.of(routes.CHAT, query, BODY, headers)).lineage


def test_a_request_no_keyed_header_or_query_routes_keeps_the_models_lineage() -> None:
    assert lineage_of(SDK) == "gpt-4o-mini"
    shared = Settings(upstream="http://127.0.0.1:9/v1", cache_scope=CacheScope.SHARED)
    assert lineage_of(SDK, rules=shared) == "gpt-4o-mini"
    assert lineage_of(SDK, "api-key=sk-in-query") == "gpt-4o-mini"  # a credential partitions
    assert routes.fleet("", "api-version=2024-10-21") == ""
    assert routes.fleet("", "API-Version=2024-10-21") == ""


def test_a_routed_request_gets_a_lineage_per_routing_naming_no_value() -> None:
    """Before: both were `gpt-4o-mini`, each answer of the other fleet a rotation of it."""
    by_header = lineage_of([*SDK, ("x-provider", "fleet-b")])
    by_other_value = lineage_of([*SDK, ("x-provider", "fleet-c")])
    by_query = lineage_of(SDK, "provider=fleet-b")
    assert len({"gpt-4o-mini", by_header, by_other_value, by_query}) == 4
    for routed in (by_header, by_other_value, by_query):
        assert routed.startswith("gpt-4o-mini" + routes.FLEET)
        assert "fleet-b" not in routed.removeprefix("gpt-4o-mini@fleet-")
        assert routes.model_of(routed) == "gpt-4o-mini"
        assert routes.routed(routed)
    assert lineage_of(SDK, "provider=fleet-b&api-version=1") == by_query
    assert not routes.routed("gpt-4o-mini")


@given(names, st.sampled_from(ROUTES), st.sampled_from(FLEETS))
def test_model_of_reads_back_a_routed_lineages_model(model: str, route: str, fleet: str) -> None:
    assert routes.model_of(routes.lineage(model, route, fleet)) == model
    assert routes.routed(routes.lineage(model, route, fleet)) == bool(fleet)


fleet_names = st.builds(
    str.__add__, names, st.sampled_from(["", *(f for f in FLEETS if f), *FLEETS[1:], "@"])
)


@given(
    fleet_names,
    st.sampled_from(ROUTES),
    st.sampled_from(FLEETS),
    fleet_names,
    st.sampled_from(ROUTES),
    st.sampled_from(FLEETS),
)
def test_a_client_cannot_name_a_model_into_another_routings_lineage(
    one: str, one_route: str, one_fleet: str, other: str, other_route: str, other_fleet: str
) -> None:
    """A chat model named `gpt-4o-mini@fleet-<digits>` is tracked apart from the routed
    lineage of `gpt-4o-mini` (`OWN_NAME`), as `x@embeddings` is from embeddings `x`."""
    same = routes.lineage(one, one_route, one_fleet) == routes.lineage(
        other, other_route, other_fleet
    )
    facts = (one, family(one_route), one_fleet) == (other, family(other_route), other_fleet)
    assert same == facts


async def test_a_cassette_teaches_each_routing_its_own_fingerprint() -> None:
    """Loaded, a routed answer teaches its routing's lineage, as serving it did; before, it
    was the model's, and loading a cassette logged a rotation the upstream never made."""
    store = MemoryStore()
    plain = Entry(b"{}", "application/json", "fp_a", 1.0, "gpt-4o-mini", route=routes.CHAT)
    routed = plain._replace(fingerprint="fp_b", stored_at=2.0, query="provider=fleet-b")
    loaded = [cassette.Loaded("k1", plain), cassette.Loaded("k2", routed)]
    assert await cassette.load(store, loaded, Codec(level=1)) == 2
    states = await store.all_fingerprints()
    assert states["gpt-4o-mini"].current == "fp_a"
    assert states["gpt-4o-mini" + routes.fleet("", "provider=fleet-b")].current == "fp_b"
    assert await store.rotations("gpt-4o-mini") == ()


def test_routings_a_client_invents_do_not_use_up_the_model_labels() -> None:
    """A routing is any header value an upstream ignores: before, 200 of them, each a lineage
    with fingerprint metrics, left every model seen next labelled `other`."""
    metrics = Metrics(CollectorRegistry())
    invented = ["gpt-4o-mini" + routes.fleet("", f"v={n}") for n in range(MAX_MODELS + 1)]
    labels = [metrics.model(name) for name in invented]
    assert labels[:MAX_ROUTED] == invented[:MAX_ROUTED]
    assert set(labels[MAX_ROUTED:]) == {OTHER}
    assert metrics.model("gpt-4.1") == "gpt-4.1"
    plain = [metrics.model(f"m{n}") for n in range(MAX_MODELS)]
    assert plain[-2] == f"m{MAX_MODELS - 2}" and plain[-1] == OTHER  # gpt-4.1 took one slot
