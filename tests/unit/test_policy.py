"""Unit tests of proxy.policy: seed enforcement, tenant scope, Cache-Control and the cache plan."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.canonical import CHAT, COMPLETIONS, EMBEDDINGS
from proxy.core.fingerprints import FingerprintSeen, ModelFingerprints
from proxy.core.policy import (
    CacheMode,
    CacheScope,
    Directives,
    Enforce,
    FingerprintPolicy,
    Outcome,
    Plan,
    acceptable_fingerprints,
    alternating,
    cache_scope,
    enforce,
    is_fresh,
    parse_cache_control,
    plan,
    refused_by_upstream,
)
from proxy.errors import InvalidParameter

DEFAULT_SEED = 12345
CHAT_BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0.9,
    "top_p": 0.5,
}
COMPLETION_BODY: dict[str, Any] = {"model": "gpt-3.5-turbo-instruct", "prompt": "Once"}
EMBEDDING_BODY: dict[str, Any] = {"model": "text-embedding-3-small", "input": "hi", "seed": 3}


# --------------------------------------------------------------------------------------------
# enforce


class TestEnforce:
    @pytest.mark.parametrize("route", [CHAT, COMPLETIONS])
    @pytest.mark.parametrize("mode", [Enforce.SEED, Enforce.STRICT])
    def test_default_seed_when_absent(self, route: str, mode: Enforce) -> None:
        out = enforce(dict(CHAT_BODY), route, mode, DEFAULT_SEED)
        assert out.body["seed"] == DEFAULT_SEED
        assert out.seed == DEFAULT_SEED
        assert out.source == "default"

    @pytest.mark.parametrize("route", [CHAT, COMPLETIONS])
    def test_default_seed_when_null(self, route: str) -> None:
        out = enforce({**CHAT_BODY, "seed": None}, route, Enforce.SEED, DEFAULT_SEED)
        assert out.body["seed"] == DEFAULT_SEED
        assert (out.seed, out.source) == (DEFAULT_SEED, "default")

    @pytest.mark.parametrize("route", [CHAT, COMPLETIONS])
    @pytest.mark.parametrize("seed", [0, 7, -1, 2**63 - 1, -(2**63)])
    def test_client_seed_kept(self, route: str, seed: int) -> None:
        out = enforce({**CHAT_BODY, "seed": seed}, route, Enforce.SEED, DEFAULT_SEED)
        assert out.body["seed"] == seed
        assert (out.seed, out.source) == (seed, "client")

    def test_seed_mode_keeps_sampling(self) -> None:
        out = enforce(dict(CHAT_BODY), CHAT, Enforce.SEED, DEFAULT_SEED)
        assert out.body == {**CHAT_BODY, "seed": DEFAULT_SEED}

    def test_seed_mode_adds_nothing_else(self) -> None:
        body = {"model": "m", "messages": []}
        out = enforce(body, CHAT, Enforce.SEED, DEFAULT_SEED)
        assert out.body == {"model": "m", "messages": [], "seed": DEFAULT_SEED}

    def test_default_seed_is_configurable(self) -> None:
        out = enforce(dict(COMPLETION_BODY), COMPLETIONS, Enforce.SEED, 99)
        assert (out.body["seed"], out.seed, out.source) == (99, 99, "default")

    @pytest.mark.parametrize("mode", list(Enforce))
    def test_embeddings_untouched(self, mode: Enforce) -> None:
        body = dict(EMBEDDING_BODY)
        out = enforce(body, EMBEDDINGS, mode, DEFAULT_SEED)
        assert out.body == EMBEDDING_BODY
        assert out.seed is None
        assert out.source is None

    @pytest.mark.parametrize("mode", list(Enforce))
    def test_unseeded_route_does_not_validate_seed(self, mode: Enforce) -> None:
        out = enforce({"input": "x", "seed": "abc"}, EMBEDDINGS, mode, DEFAULT_SEED)
        assert (out.seed, out.source) == (None, None)

    @pytest.mark.parametrize("route", [CHAT, COMPLETIONS])
    def test_strict_forces_temperature_and_top_p(self, route: str) -> None:
        out = enforce(dict(CHAT_BODY), route, Enforce.STRICT, DEFAULT_SEED)
        assert out.body["temperature"] == 0
        assert out.body["top_p"] == 1
        assert out.body["seed"] == DEFAULT_SEED
        assert out.body["model"] == CHAT_BODY["model"]
        assert out.body["messages"] == CHAT_BODY["messages"]

    def test_strict_adds_temperature_and_top_p_when_absent(self) -> None:
        out = enforce({"model": "m", "messages": []}, CHAT, Enforce.STRICT, DEFAULT_SEED)
        assert out.body == {
            "model": "m",
            "messages": [],
            "seed": DEFAULT_SEED,
            "temperature": 0,
            "top_p": 1,
        }

    def test_strict_keeps_client_seed(self) -> None:
        out = enforce({**CHAT_BODY, "seed": 5}, CHAT, Enforce.STRICT, DEFAULT_SEED)
        assert (out.body["seed"], out.seed, out.source) == (5, 5, "client")
        assert (out.body["temperature"], out.body["top_p"]) == (0, 1)

    def test_strict_leaves_other_parameters(self) -> None:
        body = {**CHAT_BODY, "max_tokens": 5, "stop": ["x"], "n": 2}
        out = enforce(body, CHAT, Enforce.STRICT, DEFAULT_SEED)
        assert (out.body["max_tokens"], out.body["stop"], out.body["n"]) == (5, ["x"], 2)

    @pytest.mark.parametrize("route", [CHAT, COMPLETIONS])
    def test_off_forwards_untouched_without_seed(self, route: str) -> None:
        body = dict(CHAT_BODY)
        out = enforce(body, route, Enforce.OFF, DEFAULT_SEED)
        assert out.body == CHAT_BODY
        assert "seed" not in out.body
        assert (out.seed, out.source) == (None, None)

    def test_off_reports_client_seed(self) -> None:
        body = {**CHAT_BODY, "seed": 42}
        out = enforce(body, CHAT, Enforce.OFF, DEFAULT_SEED)
        assert out.body == body
        assert (out.seed, out.source) == (42, "client")

    def test_off_with_null_seed(self) -> None:
        body = {**CHAT_BODY, "seed": None}
        out = enforce(body, CHAT, Enforce.OFF, DEFAULT_SEED)
        assert out.body == body
        assert (out.seed, out.source) == (None, None)

    @pytest.mark.parametrize("mode", list(Enforce))
    @pytest.mark.parametrize("route", [CHAT, COMPLETIONS, EMBEDDINGS])
    def test_input_body_not_mutated(self, mode: Enforce, route: str) -> None:
        body = {**CHAT_BODY, "messages": [{"role": "user", "content": "hi"}]}
        before = copy.deepcopy(body)
        enforce(body, route, mode, DEFAULT_SEED)
        assert body == before

    @pytest.mark.parametrize(
        "seed",
        [
            pytest.param("5", id="string"),
            pytest.param(1.5, id="fraction"),
            pytest.param(True, id="true"),
            pytest.param(False, id="false"),
            pytest.param(2**63, id="2^63"),
            pytest.param(-(2**63) - 1, id="-2^63-1"),
            pytest.param(2.0**63, id="2.0^63"),
            pytest.param(1e300, id="1e300"),
            pytest.param([5], id="list"),
            pytest.param({"v": 5}, id="object"),
        ],
    )
    @pytest.mark.parametrize("mode", [Enforce.SEED, Enforce.STRICT])
    @pytest.mark.parametrize("route", [CHAT, COMPLETIONS])
    def test_non_integer_seed_rejected(self, seed: Any, mode: Enforce, route: str) -> None:
        with pytest.raises(InvalidParameter) as info:
            enforce({**CHAT_BODY, "seed": seed}, route, mode, DEFAULT_SEED)
        error = info.value
        assert error.status == 400
        assert error.param == "seed"
        assert orjson.loads(error.body())["error"]["param"] == "seed"

    @pytest.mark.parametrize("mode", [Enforce.SEED, Enforce.STRICT])
    def test_integral_float_seed_accepted(self, mode: Enforce) -> None:
        out = enforce({**CHAT_BODY, "seed": 5.0}, CHAT, mode, DEFAULT_SEED)
        assert out.seed == 5
        assert type(out.seed) is int
        assert out.source == "client"
        assert out.body["seed"] == 5

    @pytest.mark.parametrize("seed", [2.0**53, 1e18, -(2.0**63)])
    @pytest.mark.parametrize("mode", [Enforce.SEED, Enforce.STRICT])
    def test_a_large_integral_float_seed_reaches_the_upstream_as_the_integer_reported(
        self, seed: float, mode: Enforce
    ) -> None:
        """Parsing keeps floats beyond 2^53 as floats: sent on, `1e18` would reach the upstream
        as a decimal number (refused, or rounded its own way) while X-Repro-Seed reports an
        integer. The body the upstream reads holds the very integer reported."""
        out = enforce({**CHAT_BODY, "seed": seed}, CHAT, mode, DEFAULT_SEED)
        assert out.seed == int(seed)
        assert type(out.body["seed"]) is int
        assert out.body["seed"] == out.seed

    @settings(max_examples=50, deadline=None)
    @given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
    def test_any_int64_seed_kept(self, seed: int) -> None:
        out = enforce({"seed": seed}, CHAT, Enforce.SEED, DEFAULT_SEED)
        assert (out.body["seed"], out.seed, out.source) == (seed, seed, "client")


# --------------------------------------------------------------------------------------------
# cache_scope

SECRET = b"s" * 32
KEY = "sk-proj-abcdef0123456789ABCDEF"


class TestCacheScope:
    def test_shared(self) -> None:
        assert cache_scope(KEY, CacheScope.SHARED, SECRET) == "shared"
        assert cache_scope(None, CacheScope.SHARED, SECRET) == "shared"
        assert cache_scope("other", CacheScope.SHARED, b"other") == "shared"

    @pytest.mark.parametrize("missing", [None, ""])
    def test_anonymous_without_key(self, missing: str | None) -> None:
        assert cache_scope(missing, CacheScope.KEY, SECRET) == "anonymous"

    def test_hmac_never_contains_the_key(self) -> None:
        scope = cache_scope(KEY, CacheScope.KEY, SECRET)
        assert KEY not in scope
        assert KEY[-8:] not in scope
        assert KEY[:8] not in scope
        assert scope not in ("shared", "anonymous")

    def test_hmac_is_keyed(self) -> None:
        scope = cache_scope(KEY, CacheScope.KEY, SECRET)
        assert scope not in hashlib.sha256(KEY.encode()).hexdigest()
        assert scope not in hashlib.sha256(SECRET + KEY.encode()).hexdigest()

    def test_hex_and_long_enough(self) -> None:
        scope = cache_scope(KEY, CacheScope.KEY, SECRET)
        int(scope, 16)
        assert scope == scope.lower()
        assert len(scope) >= 32

    def test_stable(self) -> None:
        assert cache_scope(KEY, CacheScope.KEY, SECRET) == cache_scope(KEY, CacheScope.KEY, SECRET)

    def test_differs_per_key(self) -> None:
        assert cache_scope(KEY, CacheScope.KEY, SECRET) != cache_scope(
            KEY + "x", CacheScope.KEY, SECRET
        )

    def test_differs_per_secret(self) -> None:
        assert cache_scope(KEY, CacheScope.KEY, SECRET) != cache_scope(
            KEY, CacheScope.KEY, b"t" * 32
        )

    @settings(max_examples=50, deadline=None)
    @given(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=60))
    def test_distinct_keys_distinct_scopes(self, a: str, b: str) -> None:
        if a != b:
            assert cache_scope(a, CacheScope.KEY, SECRET) != cache_scope(b, CacheScope.KEY, SECRET)


# --------------------------------------------------------------------------------------------
# parse_cache_control


class TestParseCacheControl:
    def test_none(self) -> None:
        assert parse_cache_control([]) == Directives()

    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("no-cache", Directives(no_cache=True)),
            ("no-store", Directives(no_store=True)),
            ("only-if-cached", Directives(only_if_cached=True)),
            ("max-age=60", Directives(max_age=60)),
            ("max-age=0", Directives(max_age=0)),
            ('max-age="60"', Directives(max_age=60)),
            ("NO-CACHE", Directives(no_cache=True)),
            ("No-Store", Directives(no_store=True)),
            ("Only-If-Cached", Directives(only_if_cached=True)),
            ("MAX-AGE=5", Directives(max_age=5)),
            ("  no-cache  ", Directives(no_cache=True)),
            ("max-age = 7", Directives(max_age=7)),
            ("no-cache, max-age=30", Directives(no_cache=True, max_age=30)),
            ("no-store,only-if-cached", Directives(no_store=True, only_if_cached=True)),
            ('no-cache="set-cookie"', Directives(no_cache=True)),
        ],
    )
    def test_directives(self, header: str, expected: Directives) -> None:
        assert parse_cache_control([header]) == expected

    def test_several_headers(self) -> None:
        assert parse_cache_control(["no-cache", "max-age=10", "only-if-cached"]) == Directives(
            no_cache=True, only_if_cached=True, max_age=10
        )

    @pytest.mark.parametrize(
        "junk",
        [
            "",
            ",,,",
            "private",
            "public, must-revalidate",
            "no-transform",
            "max-stale=10",
            "min-fresh=5",
            "nocache",
            "no_cache",
            "max-age",
            "max-age=",
            "max-age=abc",
            "max-age=-1",
            "max-age=1.5",
            "max-age=1e3",
            'max-age="',
            "=",
            "no-cache-please",
        ],
    )
    def test_junk_ignored(self, junk: str) -> None:
        assert parse_cache_control([junk]) == Directives()

    def test_junk_does_not_hide_good_directives(self) -> None:
        assert parse_cache_control(["private, max-age=abc, no-store, foo=bar"]) == Directives(
            no_store=True
        )

    @pytest.mark.parametrize("digit", ["²", "①"])
    def test_max_age_with_non_ascii_digit_ignored(self, digit: str) -> None:
        # str.isdigit() is true for superscripts, but int() refuses them: the header of one
        # client must not raise out of the parser (a 500) but be ignored as malformed.
        assert parse_cache_control([f"max-age={digit}"]) == Directives()

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)), max_size=3)
    )
    def test_never_raises(self, headers: list[str]) -> None:
        parsed = parse_cache_control(headers)
        assert parsed.max_age is None or parsed.max_age >= 0


# --------------------------------------------------------------------------------------------
# plan

NONE = Directives()
NO_CACHE = Directives(no_cache=True)
NO_STORE = Directives(no_store=True)
ONLY_IF_CACHED = Directives(only_if_cached=True)
NO_CACHE_ONLY_IF_CACHED = Directives(no_cache=True, only_if_cached=True)
NO_STORE_ONLY_IF_CACHED = Directives(no_store=True, only_if_cached=True)

#                                   lookup store  upstream outcome
LOOKUP_STORE_FETCH = Plan(True, True, True, Outcome.MISS)
REFRESH = Plan(False, True, True, Outcome.REFRESH)
BYPASS = Plan(False, False, True, Outcome.BYPASS)
CACHE_ONLY = Plan(True, False, False, Outcome.MISS)
NOTHING = Plan(False, False, False, Outcome.BYPASS)

PLAN_TABLE = [
    (CacheMode.READWRITE, NONE, LOOKUP_STORE_FETCH),
    (CacheMode.READWRITE, NO_CACHE, REFRESH),
    (CacheMode.READWRITE, NO_STORE, BYPASS),
    (CacheMode.READWRITE, ONLY_IF_CACHED, CACHE_ONLY),
    (CacheMode.REPLAY, NONE, CACHE_ONLY),
    (CacheMode.REPLAY, NO_CACHE, CACHE_ONLY),
    (CacheMode.REPLAY, NO_STORE, CACHE_ONLY),
    (CacheMode.REPLAY, ONLY_IF_CACHED, CACHE_ONLY),
    (CacheMode.RECORD, NONE, REFRESH),
    (CacheMode.RECORD, NO_CACHE, REFRESH),
    (CacheMode.RECORD, NO_STORE, BYPASS),
    (CacheMode.RECORD, ONLY_IF_CACHED, CACHE_ONLY),
    (CacheMode.OFF, NONE, BYPASS),
    (CacheMode.OFF, NO_CACHE, BYPASS),
    (CacheMode.OFF, NO_STORE, BYPASS),
    (CacheMode.OFF, ONLY_IF_CACHED, NOTHING),
    # RFC 9111 5.2.1.7: nothing satisfies a stored-only request that refuses stored answers.
    *((mode, NO_CACHE_ONLY_IF_CACHED, NOTHING) for mode in CacheMode),
    *((mode, NO_STORE_ONLY_IF_CACHED, NOTHING) for mode in CacheMode),
]


def _directive_id(d: Directives) -> str:
    names = [n for n in ("no_cache", "no_store", "only_if_cached") if getattr(d, n)]
    return "+".join(names) or "none"


class TestPlan:
    @pytest.mark.parametrize(
        ("mode", "directives", "expected"),
        PLAN_TABLE,
        ids=[f"{m.value}-{_directive_id(d)}" for m, d, _ in PLAN_TABLE],
    )
    def test_table(self, mode: CacheMode, directives: Directives, expected: Plan) -> None:
        assert plan(mode, directives) == expected

    def test_table_is_complete(self) -> None:
        assert {(m, d) for m, d, _ in PLAN_TABLE} == {
            (m, d)
            for m in CacheMode
            for d in (
                NONE,
                NO_CACHE,
                NO_STORE,
                ONLY_IF_CACHED,
                NO_CACHE_ONLY_IF_CACHED,
                NO_STORE_ONLY_IF_CACHED,
            )
        }

    @pytest.mark.parametrize("mode", list(CacheMode))
    def test_max_age_does_not_change_the_plan(self, mode: CacheMode) -> None:
        assert plan(mode, Directives(max_age=5)) == plan(mode, NONE)

    @given(
        st.sampled_from(list(CacheMode)),
        st.builds(
            Directives,
            no_cache=st.booleans(),
            no_store=st.booleans(),
            only_if_cached=st.booleans(),
            max_age=st.none() | st.integers(0, 10**6),
        ),
    )
    def test_invariants(self, mode: CacheMode, directives: Directives) -> None:
        p = plan(mode, directives)
        unsatisfiable = directives.only_if_cached and (directives.no_cache or directives.no_store)
        if unsatisfiable:
            assert p == NOTHING  # in every mode: a 504, as for any only-if-cached miss
        elif mode is CacheMode.REPLAY:
            assert p.lookup and not p.upstream and not p.store
        if directives.only_if_cached:
            assert not p.upstream
        if mode is not CacheMode.REPLAY and (mode is CacheMode.OFF or directives.no_store):
            assert not p.lookup and not p.store and p.outcome is Outcome.BYPASS
        if p.store:
            assert p.upstream  # nothing to store without an upstream answer
        if p.upstream and p.store and (mode is CacheMode.RECORD or directives.no_cache):
            assert not p.lookup and p.outcome is Outcome.REFRESH
        if p.upstream and p.lookup:
            assert p.store and p.outcome is Outcome.MISS
        assert p.outcome is not Outcome.HIT and p.outcome is not Outcome.STALE


# --------------------------------------------------------------------------------------------
# acceptable_fingerprints


def _state(current: str, *seen: tuple[str, float]) -> ModelFingerprints:
    return ModelFingerprints(
        current=current,
        seen=tuple(
            FingerprintSeen(fp, first_seen=0.0, last_seen=last, count=1) for fp, last in seen
        ),
    )


NOW = 10_000.0
STATE = _state(
    "fp_new",
    ("fp_ancient", NOW - 5000),
    ("fp_old", NOW - 100),
    ("fp_recent", NOW - 20),
    ("fp_new", NOW),
)


class TestAcceptableFingerprints:
    @pytest.mark.parametrize("state", [None, STATE])
    def test_pin_accepts_any(self, state: ModelFingerprints | None) -> None:
        assert acceptable_fingerprints(FingerprintPolicy.PIN, state, 60, NOW) is None

    @pytest.mark.parametrize("grace", [0, 60])
    def test_follow_without_state_accepts_none(self, grace: float) -> None:
        result = acceptable_fingerprints(FingerprintPolicy.FOLLOW, None, grace, NOW)
        assert result is not None
        assert list(result) == []

    def test_grace_zero_only_current(self) -> None:
        assert list(acceptable_fingerprints(FingerprintPolicy.FOLLOW, STATE, 0, NOW) or ()) == [
            "fp_new"
        ]

    def test_grace_includes_recent_excludes_old(self) -> None:
        result = acceptable_fingerprints(FingerprintPolicy.FOLLOW, STATE, 30, NOW)
        assert result is not None
        assert next(iter(result)) == "fp_new"
        assert set(result) == {"fp_new", "fp_recent"}

    def test_wider_grace(self) -> None:
        result = acceptable_fingerprints(FingerprintPolicy.FOLLOW, STATE, 120, NOW)
        assert result is not None
        assert next(iter(result)) == "fp_new"
        assert set(result) == {"fp_new", "fp_recent", "fp_old"}
        assert len(list(result)) == 3

    def test_grace_boundary_inclusive(self) -> None:
        result = acceptable_fingerprints(FingerprintPolicy.FOLLOW, STATE, 20, NOW)
        assert set(result or ()) == {"fp_new", "fp_recent"}

    def test_current_first_without_duplicates(self) -> None:
        result = list(acceptable_fingerprints(FingerprintPolicy.FOLLOW, STATE, 10**9, NOW) or ())
        assert result[0] == "fp_new"
        assert len(result) == len(set(result)) == 4

    def test_current_counts_even_if_not_seen_recently(self) -> None:
        state = _state("fp_cur", ("fp_cur", NOW - 10**6))
        assert list(acceptable_fingerprints(FingerprintPolicy.FOLLOW, state, 5, NOW) or ()) == [
            "fp_cur"
        ]

    def test_current_without_history(self) -> None:
        state = ModelFingerprints(current="fp_only")
        assert list(acceptable_fingerprints(FingerprintPolicy.FOLLOW, state, 30, NOW) or ()) == [
            "fp_only"
        ]


# --------------------------------------------------------------------------------------------
# is_fresh


class TestIsFresh:
    @pytest.mark.parametrize("age", [0, 1, 10**9])
    def test_no_ttl_no_max_age_always_fresh(self, age: float) -> None:
        assert is_fresh(1000.0, 1000.0 + age, ttl=0, max_age=None)

    @pytest.mark.parametrize(("age", "fresh"), [(0, True), (59.9, True), (60, False), (61, False)])
    def test_ttl(self, age: float, fresh: bool) -> None:
        assert is_fresh(1000.0, 1000.0 + age, ttl=60, max_age=None) is fresh

    @pytest.mark.parametrize(("age", "fresh"), [(0, True), (5, True), (9.5, True), (11, False)])
    def test_max_age(self, age: float, fresh: bool) -> None:
        assert is_fresh(1000.0, 1000.0 + age, ttl=0, max_age=10) is fresh

    def test_max_age_means_strictly_younger(self) -> None:
        assert not is_fresh(1000.0, 1000.0, ttl=0, max_age=0)
        assert is_fresh(1000.0, 1000.5, ttl=0, max_age=1)
        assert not is_fresh(1000.0, 1001.0, ttl=0, max_age=1)

    def test_both_limits_apply(self) -> None:
        assert not is_fresh(1000.0, 1050.0, ttl=60, max_age=30)  # too old for max-age
        assert not is_fresh(1000.0, 1070.0, ttl=60, max_age=100)  # expired by ttl
        assert is_fresh(1000.0, 1020.0, ttl=60, max_age=30)


class TestAlternation:
    """Three changes back within the flap window make the recent fingerprints one generation."""

    @staticmethod
    def flapping(*backs: float) -> ModelFingerprints:
        state = _state("fp_b", ("fp_gone", NOW - 5000), ("fp_a", NOW - 30), ("fp_b", NOW))
        return ModelFingerprints(state.current, state.seen, changes_back=backs)

    def test_an_alternating_model_serves_its_recent_fingerprints_oldest_first(self) -> None:
        state = self.flapping(NOW - 200, NOW - 100, NOW - 10)
        result = acceptable_fingerprints(FingerprintPolicy.FOLLOW, state, 0, NOW, 600)
        assert list(result or ()) == ["fp_a", "fp_b"]
        assert alternating(state, NOW, 600)

    def test_two_changes_back_are_a_rotation_with_a_straggler_not_alternation(self) -> None:
        state = self.flapping(NOW - 100, NOW - 10)
        assert not alternating(state, NOW, 600)
        assert acceptable_fingerprints(FingerprintPolicy.FOLLOW, state, 0, NOW, 600) == ("fp_b",)

    def test_changes_back_older_than_the_window_do_not_count(self) -> None:
        state = self.flapping(NOW - 900, NOW - 800, NOW - 10)
        assert not alternating(state, NOW, 600)
        assert not alternating(self.flapping(NOW - 3, NOW - 2, NOW - 1), NOW, 0)

    def test_a_new_fingerprint_after_an_alternation_is_a_rotation_followed_at_once(self) -> None:
        flapped = self.flapping(NOW - 30, NOW - 20, NOW - 10)
        rotated = ModelFingerprints(
            "fp_c", (*flapped.seen, FingerprintSeen("fp_c", NOW - 5, NOW, 1)), flapped.changes_back
        )
        assert not alternating(rotated, NOW, 600)
        assert acceptable_fingerprints(FingerprintPolicy.FOLLOW, rotated, 0, NOW, 600) == ("fp_c",)

    def test_pin_is_unchanged_by_alternation(self) -> None:
        state = self.flapping(NOW - 3, NOW - 2, NOW - 1)
        assert acceptable_fingerprints(FingerprintPolicy.PIN, state, 0, NOW, 600) is None


@pytest.mark.parametrize(
    ("cache_control", "vary", "reason"),
    [
        ((), (), None),
        (("no-cache, must-revalidate",), ("Accept-Encoding",), None),
        (("max-age=0, NO-STORE",), (), "Cache-Control: no-store"),
        (("public, Private",), (), "Cache-Control: private"),
        (('private="set-cookie"',), (), None),
        ((), ("accept-encoding", "OpenAI-Organization"), "Vary"),
        ((), ("*",), "Vary"),
        ((), ("Authorization, ,",), None),
    ],
)
def test_the_upstream_refuses_storing_by_no_store_private_or_a_vary_the_key_misses(
    cache_control: tuple[str, ...], vary: tuple[str, ...], reason: str | None
) -> None:
    keyed = frozenset({"authorization"})
    assert refused_by_upstream(cache_control, vary, keyed) == reason
