"""Labels that cannot change a chat answer do not split the cache; a label the answer echoes
does. An app following the provider's advice sends a `safety_identifier` (and a
`prompt_cache_key`) per end user: keyed, every end user would have a cache of their own. A
chat completion echoes `metadata`: unkeyed, one caller's answer would carry another caller's
metadata, in `shared` scope another tenant's. Real proxy and sim processes, the official
openai SDK."""

from __future__ import annotations

import json
from typing import Any

from openai import OpenAI

from tests.fixtures_procs import Proxy, ProxyFactory, Sim

QUESTION = [{"role": "user", "content": "Name a colour of the sea."}]


def chat(proxy: Proxy, key: str, **labels: Any) -> tuple[str, str, dict[str, str] | None]:
    """The X-Repro-Cache state, the answer's text and the metadata it carries."""
    with OpenAI(base_url=proxy.v1, api_key=key, max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=QUESTION,  # type: ignore[arg-type]
            **labels,
        )
    answer = raw.parse()
    return raw.headers["X-Repro-Cache"], answer.choices[0].message.content or "", answer.metadata


def test_end_user_labels_share_one_cached_answer(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy()
    state, text, _ = chat(proxy, "sk-app", safety_identifier="u-1f3a", prompt_cache_key="u-1f3a")
    assert state == "MISS"
    other_user = {"safety_identifier": "u-9c07", "prompt_cache_key": "u-9c07"}
    assert chat(proxy, "sk-app", **other_user, prompt_cache_retention="24h") == ("HIT", text, None)
    assert chat(proxy, "sk-app") == ("HIT", text, None)
    assert len(sim.llm_requests()) == 1
    # The upstream received the labels as sent: only the key leaves them out.
    assert json.loads(sim.llm_requests()[0]["body"])["safety_identifier"] == "u-1f3a"


def test_a_chat_answer_echoing_metadata_is_served_to_that_metadata_only(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy("--cache-scope", "shared")
    state, text, echoed = chat(proxy, "sk-acme", metadata={"customer": "acme"})
    assert (state, echoed) == ("MISS", {"customer": "acme"})
    # The same question from another tenant with its own metadata: never acme's answer.
    state, _, echoed = chat(proxy, "sk-globex", metadata={"customer": "globex"})
    assert (state, echoed) == ("MISS", {"customer": "globex"})
    state, _, echoed = chat(proxy, "sk-globex")
    assert (state, echoed) == ("MISS", None)
    # The same metadata is the same request: shared as before.
    assert chat(proxy, "sk-globex", metadata={"customer": "acme"}) == (
        "HIT",
        text,
        {"customer": "acme"},
    )
