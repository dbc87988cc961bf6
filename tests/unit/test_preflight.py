"""Which upstreams the start-up check asks for a models list (pure)."""

from __future__ import annotations

import pytest
from yarl import URL

from proxy.server.preflight import asks_models


@pytest.mark.parametrize(
    ("base", "asked"),
    [
        ("http://127.0.0.1:8000", True),  # the commonest mistake: no /v1
        ("https://gateway.example/openai", True),
        ("https://api.openai.com/v1", False),
        ("https://api.openai.com/v1/", False),
        ("https://my-resource.openai.azure.com", False),  # Azure is given without /v1
        ("https://My-Resource.OpenAI.Azure.com.", False),
        ("https://my-resource.cognitiveservices.azure.com", False),
        ("https://openai.azure.com.evil.example", True),  # only a real suffix counts
    ],
)
def test_only_a_base_without_v1_that_is_not_azure_is_asked(base: str, asked: bool) -> None:
    assert asks_models(URL(base)) is asked
