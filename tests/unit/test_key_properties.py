"""Properties of the cache key against an oracle of our own (pure, hypothesis).

The oracle reads what the upstream receives the way an upstream does, independently of
proxy/core/canonical.py: Python's `json` (integers exact, decimals as doubles, true and 1 kept
apart), with the documented defaults, nulls and labels left out, type-strictly. Then:

1. bodies that mean the same (key order, whitespace, number and escape spelling, documented
   defaults, nulls) get the same key;
2. two requests that share a key send the upstream bodies that mean the same, on the same
   route, query, tenant and namespace: no collision, whatever values a client picks;
3. the upstream receives every parameter the client sent, meaning what it meant.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.core import routes
from proxy.core.call import Asked, Call, prepare_with
from proxy.core.canonical import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, request_key
from proxy.core.policy import CacheMode, CacheScope, Enforce
from proxy.errors import ProxyError

PROPS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

AZURE_CHAT = "/openai/deployments/dep-1/chat/completions"
ROUTES = [
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    RESPONSES,
    AZURE_CHAT,
    "/openai/v1/chat/completions",
    "/openai/responses",
]
KIND = {
    AZURE_CHAT: CHAT,
    "/openai/v1/chat/completions": CHAT,
    "/openai/responses": RESPONSES,
}

# The defaults the OpenAI API reference documents, each of the type the parameter takes.
_SAMPLING = {"temperature": 1, "top_p": 1, "presence_penalty": 0, "frequency_penalty": 0}
DOCUMENTED: dict[str, dict[str, Any]] = {
    CHAT: {
        **_SAMPLING,
        "stream": False,
        "logprobs": False,
        "parallel_tool_calls": True,
        "response_format": {"type": "text"},
        "store": False,
        "metadata": {},
    },
    # `logprobs` is an integer here (0 to 5) whose default is null, not false.
    # Not `n` on chat: newer models refuse it given, even 1.
    COMPLETIONS: {**_SAMPLING, "n": 1, "stream": False, "echo": False, "best_of": 1},
    EMBEDDINGS: {"encoding_format": "float"},
    RESPONSES: {
        "temperature": 1,
        "top_p": 1,
        "stream": False,
        "background": False,
        "parallel_tool_calls": True,
        "truncation": "disabled",
        "tool_choice": "auto",
        "text": {"format": {"type": "text"}},
        "store": True,
        "metadata": {},
    },
}
# Not `metadata`: a chat completion echoes it.
_PROVIDERS_OWN = {"safety_identifier", "prompt_cache_key", "prompt_cache_retention"}
LABELS = {CHAT: {"user", "prompt_cache_options", *_PROVIDERS_OWN}}
LABELS[COMPLETIONS] = LABELS[EMBEDDINGS] = LABELS[CHAT]


@dataclass(frozen=True)
class Rules:
    enforce: Enforce = Enforce.SEED
    default_seed: int = 12345
    cache_scope: CacheScope = CacheScope.KEY
    cache_mode: CacheMode = CacheMode.READWRITE
    stale_if_error: int = 0


def prepared(
    rules: Rules,
    route: str,
    raw: bytes,
    query: str = "",
    tenant: str = "tenant-a",
    namespace: str = "",
) -> Call | None:
    """The call the proxy decides, or None for a request it refuses with its own 4xx."""
    pairs = [("Authorization", "Bearer sk-a")]
    if namespace:
        pairs.append(("X-Repro-Namespace", namespace))
    try:  # the request's facts are checked as they are read (its query's credentials)
        asked = Asked.of(route, query, raw, CIMultiDictProxy(CIMultiDict(pairs)))
        return prepare_with(rules, tenant, asked)
    except ProxyError as exc:
        assert 400 <= exc.status < 500, exc
        return None


# --------------------------------------------------------------------------------------------
# The oracle: what an upstream reads


class Duplicate(Exception):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise Duplicate
    return dict(pairs)


def _tagged(value: Any) -> Any:
    """A value where true and 1 differ and 1, 1.0 and 1e0 do not (numbers exact, decimals as
    the doubles they parse to)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, int | float):
        return ("number", Fraction(value))
    if isinstance(value, list):
        return ("list", tuple(_tagged(v) for v in value))
    return ("object", tuple(sorted((k, _tagged(v)) for k, v in value.items())))


def read(raw: bytes) -> dict[str, Any]:
    value = json.loads(raw, object_pairs_hook=_pairs)
    assert isinstance(value, dict)
    return value


def meaning(route: str, raw: bytes) -> Any:
    """What an upstream asked `raw` on `route` is asked, with what the API documents as
    changing nothing left out: nulls, defaults (type-strictly), labels, stream_options off a
    stream."""
    kind = KIND.get(route, route)
    body = read(raw)
    defaults, labels = DOCUMENTED[kind], LABELS.get(kind, set())
    kept = {
        name: value
        for name, value in body.items()
        if value is not None
        and name not in labels
        and not (name in defaults and _tagged(value) == _tagged(defaults[name]))
    }
    if kept.get("stream") is not True:
        kept.pop("stream_options", None)
    return _tagged(kept)


# --------------------------------------------------------------------------------------------
# Bodies built from values that look alike

NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")
LOOKALIKES: list[Any] = [
    True,
    False,
    0,
    1,
    2,
    0.0,
    1.0,
    -0.0,
    0.5,
    "1",
    "0",
    "true",
    "",
    None,
    1e16,
    10**16,
    10**16 + 1,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**64 - 1,
    -(2**63),
    1e300,
    {},
    [],
    [1],
    [True],
    {"type": "text"},
    {"type": "json_object"},
    {"include_usage": True},
    {"temperature": 1},
    {"format": {"type": "text"}},
    NFC,
    NFD,
    "caf\u00e9\u0000",
    "\U0001f600",
    "auto",
    "disabled",
    "float",
]
PARAMETERS = sorted(
    {name for table in DOCUMENTED.values() for name in table}
    | {"seed", "user", "metadata", "stream_options", "logprobs", "top_logprobs", "max_tokens"}
    | {"safety_identifier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options"}
    | {"tools", "tool_choice", "stop", "logit_bias", "dimensions", "previous_response_id"}
)
values = st.sampled_from(LOOKALIKES)
nested = st.recursive(
    values,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(PARAMETERS), inner, max_size=3)
    ),
    max_leaves=6,
)


def base(kind: str, nonce: str) -> dict[str, Any]:
    if kind == CHAT:
        return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": nonce}]}
    if kind == COMPLETIONS:
        return {"model": "gpt-3.5-turbo-instruct", "prompt": nonce}
    if kind == EMBEDDINGS:
        return {"model": "text-embedding-3-small", "input": nonce}
    return {"model": "gpt-4o-mini", "input": nonce}


bodies = st.builds(
    lambda route, params, nonce: (route, {**base(KIND.get(route, route), nonce), **params}),
    st.sampled_from(ROUTES),
    st.dictionaries(st.sampled_from(PARAMETERS), nested, max_size=4),
    st.sampled_from(["hi", NFC, NFD, "x\u2028y"]),
)


def spelled(value: Any, rnd: random.Random) -> str:
    """JSON text of `value` in another spelling: key order, whitespace, escapes, numbers."""
    gap = rnd.choice(["", " ", "\n\t"])
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        if value and abs(value) < 2**53 and rnd.random() < 0.5:
            return rnd.choice([f"{value}.0", f"{value}e0", f"{value}0E-1"])
        if float(value) == value and rnd.random() < 0.5:  # past 2^53, only exact doubles
            return f"{value}.0"
        return str(value)
    if isinstance(value, float):
        return rnd.choice([repr(value), f"{value:.17e}"])
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=rnd.random() < 0.5)
    if isinstance(value, list):
        return "[" + gap + ("," + gap).join(spelled(v, rnd) for v in value) + "]"
    items = list(value.items())
    rnd.shuffle(items)
    inner = ("," + gap).join(
        json.dumps(k, ensure_ascii=rnd.random() < 0.5) + ":" + gap + spelled(v, rnd)
        for k, v in items
    )
    return "{" + gap + inner + gap + "}"


def raw_of(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


ENFORCE = st.sampled_from(list(Enforce))


# --------------------------------------------------------------------------------------------
# 1. Same meaning, same key


@PROPS
@given(bodies, ENFORCE, st.randoms(use_true_random=False))
def test_a_respelled_body_with_defaults_and_nulls_keeps_its_key(
    case: tuple[str, dict[str, Any]], mode: Enforce, rnd: random.Random
) -> None:
    route, body = case
    kind = KIND.get(route, route)
    noisy = dict(body)
    for name, default in DOCUMENTED[kind].items():
        if name not in noisy and rnd.random() < 0.5:
            noisy[name] = default
    if "max_tokens" not in noisy:
        noisy["max_tokens"] = None
    first = prepared(Rules(mode), route, raw_of(body))
    again = prepared(Rules(mode), route, spelled(noisy, rnd).encode())
    if first is None:
        return
    assert again is not None
    assert again.key == first.key


@pytest.mark.parametrize("mode", [Enforce.SEED, Enforce.STRICT])
def test_the_injected_seed_and_the_same_seed_given_share_a_key_and_an_upstream_body(
    mode: Enforce,
) -> None:
    """The README: a request without a seed gets --default-seed. Asked with that seed, the
    upstream reads the same bytes, so the answer is the same one."""
    body = base(CHAT, "hi")
    injected = prepared(Rules(mode), CHAT, raw_of(body))
    given_seed = prepared(Rules(mode), CHAT, raw_of({**body, "seed": 12345.0}))
    assert injected is not None and given_seed is not None
    assert (injected.key, injected.body) == (given_seed.key, given_seed.body)
    assert (injected.seed_source, given_seed.seed_source) == ("default", "client")


# --------------------------------------------------------------------------------------------
# 2. One key, one meaning


def check_no_collision(mode: Enforce, route: str, a: bytes, b: bytes) -> None:
    first, second = prepared(Rules(mode), route, a), prepared(Rules(mode), route, b)
    if first is None or second is None or first.key != second.key:
        return
    assert meaning(route, first.body) == meaning(route, second.body), (a, b)


@PROPS
@given(bodies, st.sampled_from(PARAMETERS), nested, ENFORCE)
@example((COMPLETIONS, base(COMPLETIONS, "hi")), "logprobs", False, Enforce.SEED)
@example((CHAT, base(CHAT, "hi")), "n", True, Enforce.SEED)
@example((CHAT, base(CHAT, "hi")), "logprobs", 0, Enforce.SEED)
@example((CHAT, {**base(CHAT, "hi"), "stream": True}), "stream_options", {}, Enforce.SEED)
@example((CHAT, base(CHAT, "hi")), "max_tokens", 10**16 + 1, Enforce.OFF)
@example((CHAT, base(CHAT, "hi")), "tools", [{"temperature": 1}], Enforce.SEED)
def test_two_bodies_that_share_a_key_mean_the_same(
    case: tuple[str, dict[str, Any]], name: str, value: Any, mode: Enforce
) -> None:
    route, body = case
    check_no_collision(mode, route, raw_of(body), raw_of({**body, name: value}))


@PROPS
@given(bodies, st.sampled_from(LOOKALIKES), st.sampled_from(LOOKALIKES), ENFORCE)
def test_lookalike_values_of_one_parameter_never_share_a_key(
    case: tuple[str, dict[str, Any]], a: Any, b: Any, mode: Enforce
) -> None:
    route, body = case
    for name in ("temperature", "n", "logprobs", "seed", "x_param", "top_logprobs", "echo"):
        check_no_collision(mode, route, raw_of({**body, name: a}), raw_of({**body, name: b}))


def test_nfc_and_nfd_and_tool_order_change_the_key() -> None:
    body = base(CHAT, NFC)
    tools = [{"type": "function", "function": {"name": n}} for n in ("a", "b")]
    keys = {
        prepared(Rules(), CHAT, raw_of(b)).key  # type: ignore[union-attr]
        for b in (body, base(CHAT, NFD), {**body, "tools": tools}, {**body, "tools": tools[::-1]})
    }
    assert len(keys) == 4


def test_where_a_request_goes_and_whose_it_is_are_in_the_key() -> None:
    raw = raw_of(base(CHAT, "hi"))
    calls = [
        prepared(Rules(), CHAT, raw),
        prepared(Rules(), "/openai/v1/chat/completions", raw),
        prepared(Rules(), AZURE_CHAT, raw),
        prepared(Rules(), "/openai/deployments/dep-2/chat/completions", raw),
        prepared(Rules(), AZURE_CHAT, raw, query="api-version=2024-10-21"),
        prepared(Rules(), AZURE_CHAT, raw, query="api-version=2024-06-01"),
        prepared(Rules(), CHAT, raw, tenant="tenant-b"),
        prepared(Rules(), CHAT, raw, namespace="ns"),
        prepared(Rules(), CHAT, raw, namespace="ns", tenant="tenant-b"),
        prepared(Rules(cache_scope=CacheScope.SHARED), CHAT, raw),
        prepared(Rules(cache_scope=CacheScope.SHARED), CHAT, raw, namespace="ns"),
    ]
    assert len({call.key for call in calls if call is not None}) == len(calls)


# --------------------------------------------------------------------------------------------
# 3. The upstream hears every parameter


@PROPS
@given(bodies, ENFORCE, st.randoms(use_true_random=False))
def test_the_upstream_receives_every_parameter_the_client_sent(
    case: tuple[str, dict[str, Any]], mode: Enforce, rnd: random.Random
) -> None:
    route, body = case
    raw = spelled(body, rnd).encode()
    call = prepared(Rules(mode), route, raw)
    if call is None:
        return
    if mode is Enforce.OFF:
        assert call.body == raw
        return
    sent = read(call.body)
    pinned = {"seed", "temperature", "top_p"} if mode is Enforce.STRICT else {"seed"}
    assert set(body) <= set(sent)
    for name, value in body.items():
        if name not in pinned:
            assert _tagged(sent[name]) == _tagged(value), name
    assert set(sent) - set(body) <= pinned


parts = st.text(alphabet=st.sampled_from('a",:{}\\=&;?é\x00 '), max_size=6)


@PROPS
@given(st.tuples(parts, parts, parts, parts), st.tuples(parts, parts, parts, parts))
def test_scope_namespace_query_and_vary_never_run_into_each_other(
    a: tuple[str, str, str, str], b: tuple[str, str, str, str]
) -> None:
    """Each part is a field of its own, however it is spelled: no two different sets of
    (scope, namespace, query, keyed headers' digest) share a key."""
    body = base(CHAT, "hi")
    first = request_key(CHAT, a[0], a[1], body, a[2], a[3])
    second = request_key(CHAT, b[0], b[1], body, b[2], b[3])
    assert (first == second) == (a == b)


def test_embeddings_keep_a_fingerprint_history_apart_from_chat() -> None:
    """Embeddings carry no fingerprint; a server that chats with the same model reports one.
    Tracked together, each embedding's answer was a rotation away from the chats' fingerprint,
    and under `follow` every stored chat answer of the model a miss, whoever asked."""
    chat = prepared(Rules(), CHAT, raw_of(base(CHAT, "hi")))
    embedding = prepared(Rules(), EMBEDDINGS, raw_of({**base(EMBEDDINGS, "hi"), "model": "m"}))
    responses = prepared(Rules(), RESPONSES, raw_of({**base(RESPONSES, "hi"), "model": "m"}))
    assert chat is not None and embedding is not None and responses is not None
    lineages = {chat.lineage, embedding.lineage, responses.lineage}
    assert lineages == {"gpt-4o-mini", "m@embeddings", "m@responses"}
    assert {routes.model_of(lineage) for lineage in lineages} == {"gpt-4o-mini", "m"}


@pytest.mark.parametrize(
    ("route", "query"),
    [
        (AZURE_CHAT, "foo=1;api-version=2024-06-01&api-key=K"),
        (CHAT, "a=1;key=K&b=2"),
        (CHAT, "key=K;a=1"),
    ],
)
def test_a_query_whose_credential_readers_cut_out_differently_is_refused(
    route: str, query: str
) -> None:
    """The key names the query without its credential parameters, cut at `&` and `;`. A
    server splitting at `&` alone reads `foo=1;api-version=…` as one `foo` (and no
    api-version): keyed as `foo=1&api-version=…`, it got the answer of a request that names
    an api-version, one the upstream would have refused."""
    other = query.replace(";", "&")
    raw = raw_of(base(CHAT, "hi"))
    plain = prepared(Rules(), route, raw, query=other)
    assert plain is not None
    assert prepared(Rules(), route, raw, query=query) is None
    assert prepared(Rules(), route, raw, query=query.replace("key=K", "x=1")) is not None


def _read(query: str, separators: str) -> list[str]:
    """The query's items as a server splitting at `separators` reads them, credentials out."""
    items = re.split(f"[{separators}]", query) if query else []
    credentials = ("key", "api-key")
    return [item for item in items if item and item.partition("=")[0].lower() not in credentials]


query_items = st.sampled_from(["a=1", "a=2", "b=1", "key=K", "api-key=K", "a=1;b=1", ""])
queries = st.lists(st.tuples(query_items, st.sampled_from("&;")), max_size=4).map(
    lambda pairs: "".join(item + sep for item, sep in pairs).rstrip("&;")
)


@PROPS
@given(queries, queries)
def test_two_queries_that_share_a_key_read_alike_to_every_server(a: str, b: str) -> None:
    """Whether a server splits at `&` alone or at `;` too, two queries sharing a key name the
    same parameters, credentials aside (the tenant covers those)."""
    raw = raw_of(base(CHAT, "hi"))
    first, second = prepared(Rules(), CHAT, raw, query=a), prepared(Rules(), CHAT, raw, query=b)
    if first is None or second is None or first.key != second.key:
        return
    assert _read(a, "&") == _read(b, "&") and _read(a, "&;") == _read(b, "&;")
