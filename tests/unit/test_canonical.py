"""Unit tests of proxy.canonical: strict parsing, canonical bytes and the cache key (pure)."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.canonical import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    MAX_DEPTH,
    MODERATIONS,
    RESPONSES,
    dumps,
    key_view,
    keyed,
    normalize,
    parse_body,
    reject_ambiguous,
    request_key,
)
from proxy.errors import InvalidJSON

SCOPE = "scope-a"
NAMESPACE = ""
BASE: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hi"}],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def key(body: dict[str, Any], route: str = CHAT, scope: str = SCOPE, ns: str = NAMESPACE) -> str:
    return request_key(route, scope, ns, body)


def nested_objects(depth: int) -> bytes:
    """A body whose innermost object sits `depth` containers deep (the top level counts as 1)."""
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


def nested_arrays(depth: int) -> bytes:
    """An object holding arrays, `depth` containers deep in all."""
    return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def _rejected(group: str, cases: dict[str, bytes]) -> list[Any]:
    return [pytest.param(raw, id=f"{group}/{name}") for name, raw in cases.items()]


NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"nan", b"inf"]
# Bodies parse_body refuses, by why: not an object, not JSON, a number JSON cannot hold, a
# surrogate escape that names no character.
REJECTED = [
    *_rejected(
        "not-object",
        {
            "empty-array": b"[]",
            "array-of-object": b'[{"a": 1}]',
            "int": b"1",
            "float": b"0.5",
            "string": b'"text"',
            "true": b"true",
            "false": b"false",
            "null": b"null",
        },
    ),
    *_rejected(
        "syntax",
        {
            "empty": b"",
            "blank": b"   ",
            "unterminated": b"{",
            "trailing-comma": b'{"a": 1,}',
            "single-quotes": b"{'a': 1}",
            "two-values": b'{"a": 1} {"b": 2}',
            "trailing-junk": b'{"a": 1} x',
            "leading-zero": b'{"a": 01}',
            "bare-fraction": b'{"a": .5}',
            "undefined": b'{"a": undefined}',
            "invalid-utf8": b'{"a": "\xff"}',
            "comment": b'{"a": 1 /* c */}',
        },
    ),
    *_rejected(
        "non-finite",
        {number.decode(): b'{"temperature": ' + number + b"}" for number in NON_FINITE},
    ),
    *_rejected(
        "lone-surrogate",
        {
            "lone-high": b'{"content": "\\ud800"}',
            "lone-low": b'{"content": "\\udc00"}',
            "high-then-char": b'{"content": "x\\ud83dy"}',
            "reversed-pair": b'{"content": "\\ude00\\ud83d"}',
        },
    ),
]


# --------------------------------------------------------------------------------------------
# parse_body


class TestParseBody:
    def test_valid_object(self) -> None:
        raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "t": 0.7}'
        assert parse_body(raw) == {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "t": 0.7,
        }

    def test_whitespace_around_object(self) -> None:
        assert parse_body(b' \n\t{"a": 1}\r\n ') == {"a": 1}

    def test_empty_object(self) -> None:
        assert parse_body(b"{}") == {}

    def test_unicode_and_valid_surrogate_pair(self) -> None:
        assert parse_body('{"c": "h\\u00e9 \\ud83d\\ude00 ✓"}'.encode()) == {"c": "hé 😀 ✓"}

    @pytest.mark.parametrize("raw", REJECTED)
    def test_rejected(self, raw: bytes) -> None:
        with pytest.raises(InvalidJSON):
            parse_body(raw)

    def test_depth_limit_is_128(self) -> None:
        assert MAX_DEPTH == 128

    @pytest.mark.parametrize("build", [nested_objects, nested_arrays])
    def test_depth_128_accepted(self, build: Any) -> None:
        assert isinstance(parse_body(build(128)), dict)

    @pytest.mark.parametrize("build", [nested_objects, nested_arrays])
    def test_depth_129_rejected(self, build: Any) -> None:
        with pytest.raises(InvalidJSON):
            parse_body(build(129))

    def test_depth_counts_deepest_branch_only(self) -> None:
        deep = nested_objects(128)
        wide = b'{"x": [1, 2, {"y": [3]}], "deep": ' + deep + b"}"
        with pytest.raises(InvalidJSON):  # the deep branch now sits one level lower
            parse_body(wide)
        assert isinstance(
            parse_body(b'{"x": [1, {"y": [3]}], "deep": ' + nested_objects(127) + b"}"), dict
        )

    @pytest.mark.parametrize("build", [nested_objects, nested_arrays])
    def test_very_deep_rejected_without_recursion_error(self, build: Any) -> None:
        with pytest.raises(InvalidJSON):
            parse_body(build(5000))

    def test_very_deep_unterminated_rejected(self) -> None:
        with pytest.raises(InvalidJSON):
            parse_body(b'{"a":' + b"[" * 100_000)

    def test_error_shape(self) -> None:
        with pytest.raises(InvalidJSON) as info:
            parse_body(b"[1]")
        error = info.value
        assert error.status == 400
        assert error.code == "invalid_json"
        payload = orjson.loads(error.body())
        assert payload["error"]["code"] == "invalid_json"
        assert payload["error"]["type"] == "invalid_request_error"
        assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]

    @pytest.mark.parametrize("raw", [b"nope", b"NaN", nested_objects(129), nested_objects(5000)])
    def test_every_rejection_is_400_invalid_json(self, raw: bytes) -> None:
        with pytest.raises(InvalidJSON) as info:
            parse_body(raw)
        assert (info.value.status, info.value.code) == (400, "invalid_json")


# --------------------------------------------------------------------------------------------
# normalize / dumps


class TestDumps:
    def test_sorted_keys_and_compact(self) -> None:
        assert dumps({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == b'{"a":[1,{"c":3,"d":2}],"b":1}'

    def test_key_order_vanishes(self) -> None:
        assert dumps(parse_body(b'{"a": 1, "b": {"x": 1, "y": 2}}')) == dumps(
            parse_body(b'{"b": {"y": 2, "x": 1}, "a": 1}')
        )

    def test_whitespace_vanishes(self) -> None:
        assert dumps(parse_body(b'{ "a" :\n[ 1 ,\t2 ] }')) == dumps(parse_body(b'{"a":[1,2]}'))

    @pytest.mark.parametrize("spelling", [b"0.7", b"0.70", b"7e-1", b"7E-1", b"70e-2", b"0.700000"])
    def test_float_spellings(self, spelling: bytes) -> None:
        assert dumps(parse_body(b'{"t": ' + spelling + b"}")) == b'{"t":0.7}'

    @pytest.mark.parametrize(
        "spelling", [b"1", b"1.0", b"1e0", b"1E0", b"1.000", b"10e-1", b"0.1e1"]
    )
    def test_integral_spellings(self, spelling: bytes) -> None:
        assert dumps(parse_body(b'{"n": ' + spelling + b"}")) == b'{"n":1}'

    def test_normalize_makes_integral_floats_ints(self) -> None:
        assert normalize(1.0) == 1 and type(normalize(1.0)) is int
        assert normalize(-3.0) == -3 and type(normalize(-3.0)) is int
        assert type(normalize(0.5)) is float
        assert normalize(True) is True
        assert normalize(False) is False
        assert normalize(None) is None
        assert normalize("1.0") == "1.0"

    def test_negative_zero_is_zero(self) -> None:
        assert dumps({"p": -0.0}) == dumps({"p": 0}) == dumps({"p": 0.0}) == b'{"p":0}'
        assert dumps(parse_body(b'{"p": -0.0}')) == dumps(parse_body(b'{"p": 0}'))
        assert dumps(parse_body(b'{"p": -0}')) == b'{"p":0}'

    def test_big_floats_stay_floats_and_keep_their_value(self) -> None:
        for value in (1e20, 1e300, -1e300, 2.0**60, 1.7976931348623157e308):
            out = dumps({"v": value})
            assert orjson.loads(out)["v"] == value
            assert dumps(orjson.loads(out)) == out

    @pytest.mark.parametrize(
        "spelling", [b"1e20", b"1E20", b"1e+20", b"100000000000000000000.0", b"10e19"]
    )
    def test_big_float_spellings(self, spelling: bytes) -> None:
        assert dumps(parse_body(b'{"v": ' + spelling + b"}")) == dumps(parse_body(b'{"v": 1e20}'))

    def test_exact_ints_below_two_to_the_53(self) -> None:
        limit = 2**53 - 1
        assert dumps({"v": float(limit)}) == dumps({"v": limit}) == f'{{"v":{limit}}}'.encode()

    @pytest.mark.parametrize(
        ("spelling", "integer"),
        [
            (b"1e16", b"10000000000000000"),
            (b"10000000000000000.0", b"10000000000000000"),
            (b"9.3e18", b"9300000000000000000"),
            (b"-9.223372036854775808e18", b"-9223372036854775808"),
        ],
    )
    def test_integer_valued_doubles_up_to_64_bits_are_their_integer(
        self, spelling: bytes, integer: bytes
    ) -> None:
        """Beyond 2^53 too: 1e16 is exactly 10000000000000000, and an upstream reading numbers
        exactly (or as doubles) reads both as one value."""
        parsed = dumps(parse_body(b'{"v": ' + spelling + b"}"))
        assert parsed == dumps(parse_body(b'{"v": ' + integer + b"}")) == b'{"v":' + integer + b"}"

    def test_a_double_past_64_bits_stays_a_double(self) -> None:
        """2^64 is no integer an upstream's integer types hold: it stays the double it is."""
        two_to_the_64 = parse_body(b'{"v": 18446744073709551616.0}')
        assert dumps(two_to_the_64) == b'{"v":1.8446744073709552e+19}'
        assert dumps(parse_body(b'{"v": 1e300}')) == b'{"v":1e+300}'

    def test_booleans_are_not_numbers(self) -> None:
        assert dumps({"v": True}) != dumps({"v": 1})
        assert dumps({"v": False}) != dumps({"v": 0})
        assert dumps({"v": None}) != dumps({"v": 0})

    def test_nested(self) -> None:
        value = {"z": [{"b": 2.0, "a": [1.0, 0.70, {"y": -0.0, "x": 1e0}]}], "a": {"k": 3.50}}
        assert dumps(value) == b'{"a":{"k":3.5},"z":[{"a":[1,0.7,{"x":1,"y":0}],"b":2}]}'

    def test_strings_untouched(self) -> None:
        assert dumps({"s": "0.70", "t": "é ✓ \n"}) == '{"s":"0.70","t":"é ✓ \\n"}'.encode()

    def test_normalize_does_not_mutate(self) -> None:
        value = {"a": [1.0, {"b": 2.0}]}
        normalize(value)
        assert value == {"a": [1.0, {"b": 2.0}]}
        assert type(value["a"][0]) is float


# --------------------------------------------------------------------------------------------
# Hypothesis: JSON-like values and a re-speller that changes only the spelling.

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
safe_ints = st.integers(min_value=-(2**53), max_value=2**53)
scalars = st.none() | st.booleans() | safe_ints | finite_floats | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=6), json_values, max_size=5)


def _spell_float(value: float, rnd: random.Random) -> str:
    if value.is_integer() and -(2**63) <= value < 2**64:
        return _spell_int(int(value), rnd, negative_zero=str(value).startswith("-"))
    text = repr(value)
    choice = rnd.randrange(4)
    if choice == 0:
        return text
    if choice == 1:
        return f"{value:.17e}"  # 18 significant digits: the same double
    mantissa, sep, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    mantissa += "0" * rnd.randrange(1, 4)
    return mantissa + (("E" if choice == 3 else "e") + exponent if sep else "")


def _spell_int(value: int, rnd: random.Random, negative_zero: bool = False) -> str:
    sign = "-" if value < 0 or negative_zero else ""
    digits = str(abs(value))
    if abs(value) >= 2**53:  # a double only where it is this integer exactly
        return sign + (digits + rnd.choice(["", ".0"]) if float(value) == value else digits)
    spellings = [digits, digits + ".0", digits + "e0", digits + ".000E+0"]
    if value:
        spellings.append(digits + "0e-1")
    return sign + rnd.choice(spellings)


def respell(value: Any, rnd: random.Random) -> str:
    """JSON text meaning the same as `value`: shuffled keys, other whitespace, other numbers."""
    ws = rnd.choice(["", " ", "\n  ", "\t"])
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return _spell_int(value, rnd)
    if isinstance(value, float):
        return _spell_float(value, rnd)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=rnd.random() < 0.5)
    if isinstance(value, list):
        return "[" + ws + ("," + ws).join(respell(v, rnd) for v in value) + ws + "]"
    items = list(value.items())
    rnd.shuffle(items)
    inner = ("," + ws).join(
        json.dumps(k, ensure_ascii=rnd.random() < 0.5) + ws + ":" + ws + respell(v, rnd)
        for k, v in items
    )
    return "{" + ws + inner + ws + "}"


class TestDumpsProperties:
    @settings(max_examples=60, deadline=None)
    @given(json_values)
    def test_idempotent(self, value: Any) -> None:
        once = dumps(value)
        assert dumps(orjson.loads(once)) == once

    @settings(max_examples=60, deadline=None)
    @given(json_objects, st.randoms(use_true_random=False))
    def test_insensitive_to_spelling(self, value: dict[str, Any], rnd: random.Random) -> None:
        text = respell(value, rnd)
        assert dumps(parse_body(text.encode())) == dumps(value)

    @settings(max_examples=50, deadline=None)
    @given(json_values)
    def test_round_trips_the_value(self, value: Any) -> None:
        assert orjson.loads(dumps(value)) == normalize(value)


# --------------------------------------------------------------------------------------------
# key_view / request_key: spelling-insensitive


class TestKeyViewDropsWhatCannotMatter:
    @pytest.mark.parametrize(
        "extra",
        [
            pytest.param({"temperature": 1}, id="temperature-1"),
            pytest.param({"temperature": 1.0}, id="temperature-1.0"),
            pytest.param({"top_p": 1}, id="top_p-1"),
            pytest.param({"top_p": 1.0}, id="top_p-1.0"),
            pytest.param({"presence_penalty": 0}, id="presence_penalty-0"),
            pytest.param({"presence_penalty": -0.0}, id="presence_penalty--0.0"),
            pytest.param({"frequency_penalty": 0.0}, id="frequency_penalty-0.0"),
            pytest.param({"stream": False}, id="stream-false"),
            pytest.param({"logprobs": False}, id="logprobs-false"),
            pytest.param({"parallel_tool_calls": True}, id="parallel_tool_calls-true"),
            pytest.param({"response_format": {"type": "text"}}, id="response_format-text"),
            pytest.param({"seed": None}, id="seed-null"),
            pytest.param({"tools": None, "tool_choice": None}, id="tools-null"),
            pytest.param({"temperature": None, "max_tokens": None}, id="sampling-null"),
            pytest.param({"user": "alice"}, id="user"),
            pytest.param({"metadata": {}}, id="metadata-empty"),
            pytest.param({"prompt_cache_options": {"mode": "explicit"}}, id="prompt_cache_options"),
            pytest.param({"safety_identifier": "user-7f3a"}, id="safety_identifier"),
            pytest.param({"prompt_cache_key": "tenant-42"}, id="prompt_cache_key"),
            pytest.param({"prompt_cache_retention": "24h"}, id="prompt_cache_retention"),
            pytest.param({"store": False}, id="store-false"),
            pytest.param(
                {"stream_options": {"include_usage": True}}, id="stream_options-no-stream"
            ),
            pytest.param(
                {"stream": False, "stream_options": {"include_usage": True}},
                id="stream_options-stream-false",
            ),
        ],
    )
    def test_chat_defaults_and_labels(self, extra: dict[str, Any]) -> None:
        assert key_view(CHAT, {**BASE, **extra}) == BASE
        assert key({**BASE, **extra}) == key(BASE)

    @pytest.mark.parametrize("route", [CHAT, RESPONSES])
    def test_metadata_keys_where_the_answer_echoes_it(self, route: str) -> None:
        """A chat completion (like a response object) carries the request's metadata: served
        to other metadata, one caller's answer would show another caller's."""
        body = {**BASE, "metadata": {"customer": "acme"}}
        assert key(body, route) != key(BASE, route)
        assert key(body, route) != key({**BASE, "metadata": {"customer": "other"}}, route)

    def test_an_explicit_n_of_one_keys_apart_on_chat_only(self) -> None:
        """Newer chat models refuse `n` given, even 1, and answer it left out: a HIT of the
        one must not answer the other. The legacy completions route has no such models."""
        assert key({**BASE, "n": 1}) != key(BASE)
        assert key({**BASE, "n": 1.0}) == key({**BASE, "n": 1})
        legacy = {"model": "gpt-3.5-turbo-instruct", "prompt": "Once"}
        assert key({**legacy, "n": 1}, COMPLETIONS) == key(legacy, COMPLETIONS)

    def test_all_defaults_at_once(self) -> None:
        body = {
            **BASE,
            "temperature": 1,
            "top_p": 1,
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "stream": False,
            "parallel_tool_calls": True,
            "response_format": {"type": "text"},
            "user": "u",
            "metadata": {},
            "store": False,
            "seed": None,
        }
        assert key(body) == key(BASE)

    @pytest.mark.parametrize(
        "extra",
        [
            {"echo": False},
            {"best_of": 1},
            {"temperature": 1.0, "top_p": 1, "n": 1, "stream": False, "logprobs": None},
            {"user": "bob", "suffix": None},
        ],
    )
    def test_completions_defaults(self, extra: dict[str, Any]) -> None:
        body = {"model": "gpt-3.5-turbo-instruct", "prompt": "Once"}
        assert key({**body, **extra}, COMPLETIONS) == key(body, COMPLETIONS)

    def test_embeddings_defaults(self) -> None:
        body = {"model": "text-embedding-3-small", "input": "hello"}
        same = {**body, "encoding_format": "float", "user": "u", "dimensions": None}
        assert key(same, EMBEDDINGS) == key(body, EMBEDDINGS)
        assert key({**body, "encoding_format": "base64"}, EMBEDDINGS) != key(body, EMBEDDINGS)

    def test_moderations_default_model(self) -> None:
        """The API answers a body naming no model with omni-moderation-latest's verdict."""
        body = {"input": ["one", "two"]}
        named = {**body, "model": "omni-moderation-latest"}
        assert key(named, MODERATIONS) == key(body, MODERATIONS)
        assert key({**body, "model": "text-moderation-latest"}, MODERATIONS) != key(
            body, MODERATIONS
        )
        assert key(named, MODERATIONS) != key(named, EMBEDDINGS)

    def test_key_order_whitespace_and_numbers(self) -> None:
        a = parse_body(
            b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hi"}],'
            b'"temperature":0.7,"max_tokens":100,"seed":7}'
        )
        b = parse_body(
            b'{\n  "seed": 7.0,\n  "max_tokens": 1e2,\n  "temperature": 7e-1,\n'
            b'  "messages": [ { "content": "Say hi", "role": "user" } ],\n'
            b'  "model": "gpt-4o-mini"\n}'
        )
        c = parse_body(
            b'{"temperature":0.70,"model":"gpt-4o-mini","seed":7,"max_tokens":100.0,'
            b'"messages":[{"role":"user","content":"Say hi"}],"top_p":1.0,"user":"x"}'
        )
        assert key(a) == key(b) == key(c)

    def test_key_is_lowercase_sha256_hex(self) -> None:
        value = key(BASE)
        assert len(value) == 64
        assert value == value.lower()
        int(value, 16)

    def test_key_is_stable(self) -> None:
        assert key(dict(BASE)) == key(dict(BASE))

    def test_key_view_does_not_mutate(self) -> None:
        body = {**BASE, "temperature": 1, "stream_options": {"include_usage": True}}
        copy = json.loads(json.dumps(body))
        key_view(CHAT, body)
        request_key(CHAT, SCOPE, NAMESPACE, body)
        assert body == copy

    def test_defaults_ignored_on_route_with_query(self) -> None:
        # Azure-style `?api-version=...` is on every request; defaults must still vanish there,
        # while the query itself stays part of the key.
        query = "api-version=2024-06-01"
        with_defaults = request_key(CHAT, SCOPE, NAMESPACE, {**BASE, "temperature": 1}, query)
        assert with_defaults == request_key(CHAT, SCOPE, NAMESPACE, BASE, query)
        assert with_defaults != request_key(CHAT, SCOPE, NAMESPACE, BASE)


# --------------------------------------------------------------------------------------------
# key_view / request_key: sensitive to anything that can change the answer

VARIANTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("model", BASE, {**BASE, "model": "gpt-4o"}),
    ("message-content", BASE, {**BASE, "messages": [{"role": "user", "content": "Say hello"}]}),
    ("message-role", BASE, {**BASE, "messages": [{"role": "system", "content": "Say hi"}]}),
    (
        "message-added",
        BASE,
        {**BASE, "messages": [{"role": "system", "content": "Be terse"}, *BASE["messages"]]},
    ),
    (
        "message-order",
        {**BASE, "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
        {**BASE, "messages": [{"role": "user", "content": "b"}, {"role": "user", "content": "a"}]},
    ),
    ("tools", BASE, {**BASE, "tools": TOOLS}),
    (
        "tool-description",
        {**BASE, "tools": TOOLS},
        {
            **BASE,
            "tools": [{**TOOLS[0], "function": {**TOOLS[0]["function"], "description": "Rain"}}],
        },
    ),
    ("tool_choice", {**BASE, "tools": TOOLS}, {**BASE, "tools": TOOLS, "tool_choice": "required"}),
    ("tool_choice-none", {**BASE, "tools": TOOLS}, {**BASE, "tools": TOOLS, "tool_choice": "none"}),
    ("parallel_tool_calls-false", BASE, {**BASE, "parallel_tool_calls": False}),
    ("response_format-json", BASE, {**BASE, "response_format": {"type": "json_object"}}),
    (
        "response_format-text-vs-json",
        {**BASE, "response_format": {"type": "text"}},
        {**BASE, "response_format": {"type": "json_object"}},
    ),
    ("seed-added", BASE, {**BASE, "seed": 1}),
    ("seed-value", {**BASE, "seed": 1}, {**BASE, "seed": 2}),
    ("temperature-0.7-0.8", {**BASE, "temperature": 0.7}, {**BASE, "temperature": 0.8}),
    ("temperature-0", BASE, {**BASE, "temperature": 0}),
    ("temperature-true", BASE, {**BASE, "temperature": True}),
    ("top_p", BASE, {**BASE, "top_p": 0.9}),
    ("max_tokens", BASE, {**BASE, "max_tokens": 10}),
    ("max_tokens-value", {**BASE, "max_tokens": 10}, {**BASE, "max_tokens": 11}),
    ("max_completion_tokens", BASE, {**BASE, "max_completion_tokens": 10}),
    ("logprobs", BASE, {**BASE, "logprobs": True}),
    (
        "top_logprobs",
        {**BASE, "logprobs": True},
        {**BASE, "logprobs": True, "top_logprobs": 3},
    ),
    ("stop", BASE, {**BASE, "stop": ["\n"]}),
    ("stop-value", {**BASE, "stop": "a"}, {**BASE, "stop": "b"}),
    ("stream-true", BASE, {**BASE, "stream": True}),
    (
        "stream_options-when-streaming",
        {**BASE, "stream": True},
        {**BASE, "stream": True, "stream_options": {"include_usage": True}},
    ),
    ("n-2", BASE, {**BASE, "n": 2}),
    ("n-true", BASE, {**BASE, "n": True}),
    ("n-true-vs-1", {**BASE, "n": 1}, {**BASE, "n": True}),
    ("top_p-true", BASE, {**BASE, "top_p": True}),
    ("presence_penalty", BASE, {**BASE, "presence_penalty": 0.5}),
    ("presence_penalty-false", BASE, {**BASE, "presence_penalty": False}),
    ("frequency_penalty", BASE, {**BASE, "frequency_penalty": -0.5}),
    ("logit_bias", BASE, {**BASE, "logit_bias": {"50256": -100}}),
    ("unknown-param", BASE, {**BASE, "reasoning_effort": "low"}),
    ("string-vs-number", {**BASE, "max_tokens": 10}, {**BASE, "max_tokens": "10"}),
]


class TestKeySensitivity:
    @pytest.mark.parametrize(
        ("a", "b"), [(a, b) for _, a, b in VARIANTS], ids=[v[0] for v in VARIANTS]
    )
    def test_body_difference_changes_key(self, a: dict[str, Any], b: dict[str, Any]) -> None:
        assert key(a) != key(b)

    def test_route(self) -> None:
        assert key(BASE, CHAT) != key(BASE, COMPLETIONS)
        assert key(BASE, CHAT) != key(BASE, EMBEDDINGS)

    def test_scope(self) -> None:
        assert key(BASE, scope="a") != key(BASE, scope="b")
        assert key(BASE, scope="shared") != key(BASE, scope="anonymous")

    def test_namespace(self) -> None:
        assert key(BASE, ns="") != key(BASE, ns="suite-1")
        assert key(BASE, ns="suite-1") != key(BASE, ns="suite-2")

    def test_query_suffix_on_route(self) -> None:
        assert key(BASE, CHAT) != key(BASE, CHAT + "?api-version=1")
        assert key(BASE, CHAT + "?api-version=1") != key(BASE, CHAT + "?api-version=2")

    def test_fields_do_not_bleed_into_each_other(self) -> None:
        # scope/namespace/route are separate fields, not a concatenation.
        assert request_key(CHAT, "ab", "c", BASE) != request_key(CHAT, "a", "bc", BASE)


# --------------------------------------------------------------------------------------------
# Hypothesis: request_key of a body equals that of its shuffled, re-spelled copy

messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=20)}
    ),
    min_size=1,
    max_size=3,
)
optional_params = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(0, 2, allow_nan=False),
        "top_p": st.floats(0, 1, allow_nan=False),
        "max_tokens": st.integers(1, 4096),
        "seed": st.integers(-(2**53), 2**53),
        "n": st.integers(1, 4),
        "stop": st.lists(st.text(max_size=4), max_size=3),
        "presence_penalty": st.floats(-2, 2, allow_nan=False),
        "logit_bias": st.dictionaries(
            st.from_regex(r"[0-9]{1,5}", fullmatch=True), st.integers(-100, 100), max_size=3
        ),
        "metadata": json_objects,
        "extra": json_values,
    },
)
defaults = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.sampled_from([1, 1.0]),
        "top_p": st.sampled_from([1, 1.0]),
        "presence_penalty": st.sampled_from([0, 0.0, -0.0]),
        "frequency_penalty": st.sampled_from([0, 0.0]),
        "stream": st.just(False),
        "parallel_tool_calls": st.just(True),
        "response_format": st.just({"type": "text"}),
        "user": st.text(max_size=5),
        "store": st.just(False),
        "tool_choice": st.none(),
        "stream_options": st.just({"include_usage": True}),
    },
)


class TestRequestKeyProperties:
    @settings(max_examples=50, deadline=None)
    @given(messages, optional_params, st.randoms(use_true_random=False))
    def test_respelled_copy_has_same_key(
        self, msgs: list[dict[str, str]], params: dict[str, Any], rnd: random.Random
    ) -> None:
        body = {"model": "gpt-4o-mini", "messages": msgs, **params}
        copy = parse_body(respell(body, rnd).encode())
        assert key(copy) == key(body)

    @settings(max_examples=50, deadline=None)
    @given(messages, optional_params, defaults, st.randoms(use_true_random=False))
    def test_explicit_defaults_do_not_change_key(
        self,
        msgs: list[dict[str, str]],
        params: dict[str, Any],
        extra: dict[str, Any],
        rnd: random.Random,
    ) -> None:
        body = {"model": "gpt-4o-mini", "messages": msgs, **params}
        with_defaults = {**extra, **body}
        copy = parse_body(respell(with_defaults, rnd).encode())
        assert key(copy) == key(body)


class TestKeysStayStable:
    """Stored entries outlive proxy versions: a key must never change for the same request."""

    def test_known_keys(self) -> None:
        raw = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1.0,'
        body = parse_body(raw + b'"n":2,"seed":7,"user":"u"}')
        assert request_key(CHAT, "scope", "ns", body, "q=1") == (
            "a7f8f9000e4e365a0d018c2ecc12eac8766dcd8ef1aafaca2f25d16f43282a2a"
        )
        body = parse_body(
            b'{"model":"m","messages":[{"role":"user","content":"hi"}],"n":2.0,"seed":7}'
        )
        assert request_key(CHAT, "scope", "", body, "") == (
            "49d0ea077a40a023938d5caef5a1f3b0f4d7578fa693746ca2cd16ff718bd2c8"
        )

    @pytest.mark.parametrize(
        "raw",
        [
            b'{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":7}',
            b'{"model":"m","temperature":1.0,"user":"u","stream":false,"stream_options":{}}',
            b'{"model":"m","top_p":0.5e1,"metadata":null,"n":1}',
        ],
    )
    def test_keyed_agrees_with_request_key_and_dumps(self, raw: bytes) -> None:
        body = parse_body(raw)
        key, respelled = keyed(CHAT, "s", "ns", body, "q")
        assert key == request_key(CHAT, "s", "ns", body, "q")
        assert respelled == dumps(body)


@pytest.mark.parametrize("number", ["18446744073709551616", "-9223372036854775809", "1" + "0" * 30])
def test_an_integer_beyond_64_bits_is_refused_where_the_body_is_forwarded_as_is(
    number: str,
) -> None:
    """The key reads it as the nearest double, the upstream maybe exactly: two of them would
    share a key and get each other's answers."""
    raw = b'{"model": "m", "max_tokens": ' + number.encode() + b"}"
    parse_body(raw)  # respelled (--enforce seed|strict), the upstream reads the key's double
    with pytest.raises(InvalidJSON, match="beyond 64 bits"):
        reject_ambiguous(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"n": 18446744073709551615}',
        b'{"n": -9223372036854775808}',
        b'{"n": 1e30, "s": "1234567890123456789012"}',
    ],
)
def test_64_bit_integers_floats_and_long_digit_strings_are_not_ambiguous(raw: bytes) -> None:
    reject_ambiguous(raw)
