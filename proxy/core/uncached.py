"""Which cacheable requests are never cached, and why: what their answer depends on, the
key cannot name (pure)."""

from __future__ import annotations

from proxy.core import policy, responses, routes
from proxy.core.fingerprints import tracked
from proxy.core.policy import Plan


def plan(
    mode: policy.CacheMode,
    directives: policy.Directives,
    kind: str,
    body: dict[str, object],
    lineage: str,
) -> Plan:
    """A background response is a job the client polls for, not an answer: never cached. Nor
    is a response that reads state the upstream changes between calls, which the key cannot
    name: a `conversation` (each answer adds its turn to it, so the same body asks about a
    longer conversation each time, and a HIT would not add the turn), or a stored `prompt`
    without a `version` (its latest one, which its owner may publish anew at any time), or a
    tool running in a live container or an unpinned skill (`_runs_in_live_state`). Nor a
    chain on a response whose id is not of the form the proxy indexes and marks (a gateway's:
    LiteLLM's are base64, past 128 characters), nor one naming a stored item by its id alone
    (`_references`): whether the upstream deleted it, and who was answered with it, cannot be
    known (proxy/server/chains.py), and stored, its continuation was every sender's who learnt
    the id. Nor a model named longer than any real one (`tracked`): the proxy keeps no state
    for it; nor, on any route, a request probing the upstream's prompt cache
    (`_probes_prompt_cache`). Nor a streamed image generation or edit of several images
    (`routes.events_of`), whose stream ends once per image; nor speech asked for in another
    `stream_format` than `audio` and `sse`, nor a form's `stream` spelt otherwise than `true`
    or `false` (an upstream may read `1` as true and stream where the proxy expects one whole
    answer)."""
    if not tracked(lineage) or _probes_prompt_cache(body):
        return policy.uncached(mode, directives)
    if kind in routes.RESPONSES_STATE and (body.get("background") is True or _reads_state(body)):
        return policy.uncached(mode, directives)
    if routes.streamed(kind, body) and routes.events_of(kind, body) != kind:
        return policy.uncached(mode, directives)
    if kind == routes.SPEECH and body.get("stream_format") not in (None, "audio", "sse"):
        return policy.uncached(mode, directives)
    if kind in routes.FORMS and body.get("stream") not in _STREAMS.get(kind, _WHOLE):
        return policy.uncached(mode, directives)
    return policy.plan(mode, directives)


_WHOLE = (None, False, "false")
_STREAMS = {
    routes.TRANSCRIPTIONS: (*_WHOLE, True, "true"),
    routes.TRANSLATIONS: (*_WHOLE, True, "true"),
    routes.IMAGE_EDITS: (*_WHOLE, True, "true"),
}
"""The `stream` values a form route is cached with: whole, or as events (`proxy.core.sse`
reads their end); a variation's, whole only."""


def _reads_state(body: dict[str, object]) -> bool:
    prompt = body.get("prompt")
    pinned = isinstance(prompt, dict) and prompt.get("version") is not None
    unpinned = prompt is not None and not pinned
    untracked = body.get("previous_response_id") is not None and responses.chained_on(body) is None
    return (
        body.get("conversation") is not None
        or unpinned
        or untracked
        or _references(body)
        or _runs_in_live_state(tools_of(body))
    )


def tools_of(body: dict[str, object]) -> list[object]:
    """The tools a request makes available: its `tools`, and those an `additional_tools`
    input item adds at that point of the input."""
    tools: list[object] = [body.get("tools")]
    items = body.get("input")
    if isinstance(items, list):
        tools.extend(
            item.get("tools")
            for item in items
            if isinstance(item, dict) and item.get("type") == "additional_tools"
        )
    return tools


def _probes_prompt_cache(body: dict[str, object]) -> bool:
    """Whether a request asks about, or for, the upstream's own prompt cache rather than an
    answer (`prompt_cache_options`, the Responses API's today): `prewarm` fills that cache and
    generates no output, so the call is its side effect, which a HIT would skip;
    `comparison_response_id` asks for `prompt_cache_diagnostics`, whether that cache was
    reused against an earlier response just now, which the same body answers otherwise each
    time, and a HIT with the past's. On any route: chat's key leaves `prompt_cache_options`
    out (`canonical.NON_SEMANTIC`), and a prewarm there would land on the plain request's key.

    Other fields that point upstream were weighed and are keyed as they are: chat's
    `messages[].audio.id` names an earlier audio answer, immutable while it lives, in a body
    that carries the whole conversation it belongs to (past its `expires_at` the upstream
    refuses it, and a HIT answers as it did while it lived); `context_management` compacts the
    input the body holds (or a chain's, which `chained_on` tracks); `background_options` only
    paces background jobs, never cached, and its `continuation_id` "does not add prior
    history"."""
    options = body.get("prompt_cache_options")
    return isinstance(options, dict) and (
        options.get("prewarm") not in (None, False)
        or options.get("comparison_response_id") is not None
    )


def _references(body: dict[str, object]) -> bool:
    """Whether an input item names a stored item by its id alone (`item_reference`, whose
    `type` may be left out): the upstream reads it from the response that made it, which the
    proxy cannot tell, so neither its deletion nor who holds it can be known."""
    items = body.get("input")
    return isinstance(items, list) and any(
        isinstance(item, dict)
        and (
            item.get("type") == "item_reference" or ("id" in item and item.keys() <= {"id", "type"})
        )
        for item in items
    )


def _runs_in_live_state(tools: object) -> bool:
    """Whether a tool runs in, or loads, something the upstream keeps and its owner changes,
    which the key cannot name: an existing container, named by its id (a code interpreter's
    `container` string, a shell tool's `environment` of `container_reference`), whose files
    each run reads and writes (and the client fetches after from /v1/containers), so the same
    body asks about another container each time, and a HIT runs nothing; or a skill
    (`skill_reference`) without a pinned `version`, its default or `latest`, which its owner
    may publish anew at any time, as a stored `prompt` without one. Only tools (`tools_of`)
    say where this call runs: a container named in another input item is a past call's
    record."""
    pending: list[object] = [tools]
    while pending:  # bounded: a parsed body nests at most canonical.MAX_DEPTH deep
        value = pending.pop()
        if isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, dict):
            kind = value.get("type")
            if kind == "container_reference" or isinstance(value.get("container"), str):
                return True
            if kind == "skill_reference" and value.get("version") in (None, "latest"):
                return True
            pending.extend(item for item in value.values() if isinstance(item, dict | list))
    return False
