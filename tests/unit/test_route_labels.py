"""What a `model` selector (purge, export) finds an answer by: its model whatever its lineage,
or the lineage named alone, as `rotations --model` reads it; and the labels field keeping the
lineage in Redis, which entries of older versions lack."""

from __future__ import annotations

import orjson
import pytest

from proxy.core import routes
from proxy.store import layout
from proxy.store.base import Labels, Selector, labelled

ROUTED = routes.lineage_of("m", routes.CHAT, "", "provider=x")
DEPLOYED = "/openai/deployments/mine/chat/completions"


@pytest.mark.parametrize(
    ("labels", "found", "missed"),
    [
        (labelled("n", "m", "m"), ["m"], [ROUTED, "m@responses"]),
        (labelled("n", "m", ROUTED), ["m", ROUTED], ["m@responses", ROUTED[:-1] + "f"]),
        (labelled("n", "m", "m@responses"), ["m", "m@responses"], [ROUTED]),
        (labelled("n", "gpt-4o", routes.lineage_of("gpt-4o", DEPLOYED, "", "")), ["mine"], []),
        (Labels("n", "m"), ["m"], [ROUTED]),  # an older version's: no lineage
    ],
)
def test_a_model_selector_finds_every_lineage_of_a_model_or_the_one_named(
    labels: Labels, found: list[str], missed: list[str]
) -> None:
    for model in found:
        assert Selector(model=model).matches(labels, "fp")
        assert Selector(namespace="n", model=model).matches(labels, "fp")
        assert not Selector(namespace="o", model=model).matches(labels, "fp")
    for model in missed:
        assert not Selector(model=model).matches(labels, "fp")


def test_the_labels_field_keeps_a_lineage_only_where_there_is_one() -> None:
    assert labelled("n", "m", "m") == Labels("n", "m", "")
    assert orjson.loads(layout.tags(labelled("n", "m", "m"))) == {"namespace": "n", "model": "m"}
    tagged = layout.tags(labelled("n", "m", ROUTED))
    assert orjson.loads(tagged)["lineage"] == ROUTED
    assert layout.parse_labels(tagged) == Labels("n", "m", ROUTED)
    assert layout.parse_labels(b'{"namespace": "n", "model": "m"}') == Labels("n", "m")
