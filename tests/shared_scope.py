"""What the shared-scope tests of tenants' own answers ask, in one place: a Responses request
through the official SDK, the owner's answer and then another tenant's, and a recorded answer
of a prepared request (a cassette line)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openai import OpenAI

from proxy.core.call import Call
from proxy.core.entry import Entry
from proxy.core.routes import RESPONSES
from tests.fixtures_procs import Proxy, Sim

Asker = Callable[..., tuple[str, str, Any]]


def respond(proxy: Proxy, key: str, ns: str, model: str, body: dict[str, Any]) -> tuple[Any, Any]:
    """The SDK's raw answer to one Responses request in namespace `ns`, and its parse: a
    stream's events read whole while the client is open."""
    with OpenAI(
        base_url=proxy.v1,
        api_key=key,
        max_retries=0,
        default_headers={"X-Repro-Namespace": ns},
    ) as sdk:
        raw = sdk.responses.with_raw_response.create(model=model, **body)
        answer = raw.parse()
        return raw, list(answer) if body.get("stream") else answer


def text_asker(model: str) -> Asker:
    """An `Asker` of `model` reading the answer's text."""

    def ask(proxy: Proxy, key: str, ns: str, **body: Any) -> tuple[str, str, str]:
        raw, answer = respond(proxy, key, ns, model, body)
        return raw.headers["X-Repro-Cache"], raw.headers["X-Repro-Key"], answer.output_text

    return ask


def owners_then_others(
    ask: Asker, proxy: Proxy, sim: Sim, ns: str, body: dict[str, Any]
) -> tuple[str, str, int]:
    """Once the owner's answer is stored (a MISS, then its own HIT): the other tenant's
    X-Repro-Cache, whether its key is the owner's, and the upstream calls its request made.
    `ask(proxy, key, ns, **body)` gives X-Repro-Cache, X-Repro-Key and what the test reads."""
    state, key, read = ask(proxy, "sk-owner", ns, **body)
    assert state == "MISS"
    assert ask(proxy, "sk-owner", ns, **body) == ("HIT", key, read)  # the owner's own cache
    calls = len(sim.llm_requests())
    other, others_key, _ = ask(proxy, "sk-other", ns, **body)
    return other, "same key" if others_key == key else "own key", len(sim.llm_requests()) - calls


def recorded_entry(call: Call, model: str) -> Entry:
    """A stored answer (`{}`) to the prepared Responses request `call`, as a cassette records
    it: its request as kept."""
    return Entry(
        body=b"{}",
        content_type="application/json",
        fingerprint="fp_1",
        stored_at=1.0,
        model=model,
        seed=None,
        seed_source=None,
        prompt_tokens=0,
        completion_tokens=0,
        stream=False,
        route=RESPONSES,
        query="",
        namespace="",
        request=call.request,
    )
