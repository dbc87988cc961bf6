"""Pure decisions: seed and sampling enforcement, tenant scope, Cache-Control, cache plan.

Nothing here does I/O, so every rule can be tested on plain data.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from proxy.core.fingerprints import ModelFingerprints
from proxy.core.routes import CHAT, COMPLETIONS, RESPONSES, kind
from proxy.errors import InvalidParameter

SEEDED_ROUTES = frozenset({CHAT, COMPLETIONS})
_SEED_MIN, _SEED_MAX = -(2**63), 2**63 - 1
ANONYMOUS = "anonymous"
SHARED = "shared"


class Enforce(StrEnum):
    OFF = "off"
    SEED = "seed"
    STRICT = "strict"


class CacheMode(StrEnum):
    READWRITE = "readwrite"
    REPLAY = "replay"
    RECORD = "record"
    OFF = "off"


class FingerprintPolicy(StrEnum):
    FOLLOW = "follow"
    PIN = "pin"


class CacheScope(StrEnum):
    KEY = "key"
    SHARED = "shared"


class StreamDisconnect(StrEnum):
    """What happens to a cacheable upstream stream whose client went away."""

    FINISH = "finish"  # read it to the end and store it, so the retry is a HIT
    CANCEL = "cancel"  # close the upstream connection at once


class Outcome(StrEnum):
    """The X-Repro-Cache header values."""

    HIT = "HIT"
    MISS = "MISS"
    REFRESH = "REFRESH"
    BYPASS = "BYPASS"
    STALE = "STALE"


class Seeded(NamedTuple):
    body: dict[str, Any]
    seed: int | None
    source: str | None  # "client", "default", or None when the route takes no seed


def enforce(body: dict[str, Any], route: str, mode: Enforce, default_seed: int) -> Seeded:
    """Apply the seed policy; `strict` also pins temperature and top_p. The Responses API
    takes no seed (strict upstreams refuse unknown fields): there `strict` only pins."""
    counterpart = kind(route)
    if counterpart == RESPONSES:
        return Seeded(_pinned(body) if mode is Enforce.STRICT else body, None, None)
    if counterpart not in SEEDED_ROUTES:
        return Seeded(body, None, None)
    if mode is Enforce.OFF:
        seed = body.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool):
            return Seeded(body, seed, "client")
        return Seeded(body, None, None)
    seed = _client_seed(body)
    source = "client"
    if seed is None:
        seed, source = default_seed, "default"
    # The integer reported, even where the client sent an integral float (`1e18`).
    out = {**body, "seed": seed}
    if mode is Enforce.STRICT:
        out["temperature"] = 0
        out["top_p"] = 1
    return Seeded(out, seed, source)


_REASONING_MODELS = ("o1", "o3", "o4", "gpt-5")


def _pinned(body: dict[str, Any]) -> dict[str, Any]:
    """temperature 0 and top_p 1, except for reasoning models, which refuse both: a request
    asking for `reasoning`, or naming an o-series or gpt-5 model."""
    model = body.get("model")
    named = isinstance(model, str) and model.lower().startswith(_REASONING_MODELS)
    if named or isinstance(body.get("reasoning"), dict):
        return body
    return {**body, "temperature": 0, "top_p": 1}


def _client_seed(body: dict[str, Any]) -> int | None:
    seed = body.get("seed")
    if seed is None:
        return None
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or not _SEED_MIN <= seed <= _SEED_MAX:
        raise InvalidParameter("'seed' must be an integer between -2^63 and 2^63-1.", "seed")
    return seed


def cache_scope(api_key: str | None, scope: CacheScope, secret: bytes) -> str:
    """The tenant partition: a keyed HMAC of the API key, never the key itself."""
    if scope is CacheScope.SHARED:
        return SHARED
    if not api_key:
        return ANONYMOUS
    # aiohttp hands undecodable header bytes over as surrogates: hash the bytes as sent.
    raw = api_key.encode("utf-8", "surrogateescape")
    return hmac.new(secret, raw, hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Directives:
    no_cache: bool = False
    no_store: bool = False
    only_if_cached: bool = False
    max_age: int | None = None
    stale_if_error: int | None = None


_NO_DIRECTIVES = Directives()


def parse_cache_control(values: Sequence[str]) -> Directives:
    """The request directives we honour; unknown or malformed ones are ignored (RFC 9111)."""
    if not values:
        return _NO_DIRECTIVES
    found: dict[str, Any] = {}
    for name, arg in directives(values):
        if name in ("no-cache", "no-store", "only-if-cached"):
            found[name.replace("-", "_")] = True
        elif name in ("max-age", "stale-if-error") and arg is not None:
            arg = arg.strip().strip('"')
            if arg.isascii() and arg.isdigit():
                # Given twice (in one line or two), the stricter counts: readers in front of
                # the proxy disagree on which copy wins, so no copy may widen what was allowed.
                key, seconds = name.replace("-", "_"), _delta_seconds(arg)
                found[key] = min(seconds, found.get(key, seconds))
    return Directives(**found)


def directives(values: Sequence[str]) -> Iterator[tuple[str, str | None]]:
    """(lower-case name, argument or None) of each directive of Cache-Control header values."""
    for item in list_items(values):
        name, equals, arg = item.partition("=")
        yield name.strip().lower(), arg if equals else None


def list_items(values: Sequence[str]) -> Iterator[str]:
    """The items of comma-separated header values (Cache-Control, Vary), stripped, none empty."""
    for header in values:
        for part in header.split(","):
            if item := part.strip():
                yield item


def _delta_seconds(digits: str) -> int:
    """RFC 9111 1.2.2: a value too large to represent counts as 2^31 seconds."""
    return min(int(digits), 2**31) if len(digits) <= 10 else 2**31


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one cacheable request, before anything is looked up."""

    lookup: bool
    store: bool
    upstream: bool
    outcome: Outcome  # the X-Repro-Cache value when it is not a HIT


def plan(mode: CacheMode, directives: Directives) -> Plan:
    """Combine the process's cache mode with the request's directives.

    In replay mode the cache stands in for the upstream: it is always consulted and the upstream
    never is, whatever else the request asks. only-if-cached never reaches the upstream either;
    with no-cache (no stored answer without the upstream's word) or no-store (no lookup) it
    refuses every answer there is, so it gets the 504 of a miss in every mode (RFC 9111
    5.2.1.7: a stored response "consistent with the other constraints of the request", or 504).
    """
    if directives.only_if_cached and (directives.no_cache or directives.no_store):
        return _BYPASS_CACHED_ONLY
    if mode is CacheMode.REPLAY:
        return _REPLAY
    if mode is CacheMode.OFF or directives.no_store:
        return _BYPASS_CACHED_ONLY if directives.only_if_cached else _BYPASS
    if directives.only_if_cached:
        return _REPLAY
    if mode is CacheMode.RECORD or directives.no_cache:
        return _REFRESH
    return _READWRITE


def uncached(mode: CacheMode, directives: Directives) -> Plan:
    """The plan of a request that is never cached (a background response): forwarded, except
    in replay mode and under only-if-cached, which never reach the upstream."""
    cached_only = mode is CacheMode.REPLAY or directives.only_if_cached
    return _BYPASS_CACHED_ONLY if cached_only else _BYPASS


ALWAYS_KEYED = frozenset({"accept-encoding", "content-type", "content-length", "content-encoding"})
"""Request headers whose effect on an answer the key already covers: the proxy sends its own
Accept-Encoding and stores the answer decoded, and the body it sends (keyed) is plain JSON."""


def refused_by_upstream(
    cache_control: Sequence[str], vary: Sequence[str], keyed: Container[str]
) -> str | None:
    """Why the upstream's answer must not be stored, or None (RFC 9111 3, 4.1). `no-store` and
    `private` forbid a shared cache to store it; a `Vary` naming `*` or a request header the key
    does not cover (`keyed`, lower case, as `proxy.core.keyed.Keying` says, and ALWAYS_KEYED)
    says that another caller sending the same body could get another answer. `no-cache` allows
    storing (Azure OpenAI sends it with every answer), and reusing without asking again is what
    this cache is for; so does
    `private="field"`, which keeps only the fields named from others, and no stored answer
    keeps the upstream's fields."""
    if not cache_control and not vary:  # most answers: nothing to parse
        return None
    for name, arg in directives(cache_control):
        if name == "no-store" or (name == "private" and arg is None):
            return f"Cache-Control: {name}"
    for item in list_items(vary):
        name = item.lower()
        if name == "*" or (name not in keyed and name not in ALWAYS_KEYED):
            return "Vary"
    return None


# Plans are immutable: one of each, shared by every request.
_REPLAY = Plan(lookup=True, store=False, upstream=False, outcome=Outcome.MISS)
_BYPASS = Plan(lookup=False, store=False, upstream=True, outcome=Outcome.BYPASS)
_BYPASS_CACHED_ONLY = Plan(lookup=False, store=False, upstream=False, outcome=Outcome.BYPASS)
_REFRESH = Plan(lookup=False, store=True, upstream=True, outcome=Outcome.REFRESH)
_READWRITE = Plan(lookup=True, store=True, upstream=True, outcome=Outcome.MISS)


FLAPS_TO_ALTERNATE = 3
"""Changes back within the flap window that make a model count as alternating. A real rotation
with an answer of the old fingerprint still in flight makes two (back to the old one, back to
the new one); an upstream answering with two fingerprints at random makes one every few misses."""


def alternating(state: ModelFingerprints, now: float, window: float) -> bool:
    """Whether the model's current fingerprint moved back often enough, lately, to call its
    recent fingerprints one generation: a fleet mid-rollout, not a rotation. Only moves back
    since the current fingerprint first answered count: a fingerprint never seen before is a
    rotation, followed at once, even right after an alternation."""
    if window <= 0 or len(state.changes_back) < FLAPS_TO_ALTERNATE:
        return False
    since = max(now - window, _first_seen(state, state.current))
    return sum(1 for moment in state.changes_back if moment >= since) >= FLAPS_TO_ALTERNATE


def _first_seen(state: ModelFingerprints, fingerprint: str) -> float:
    for seen in state.seen:
        if seen.fingerprint == fingerprint:
            return seen.first_seen
    return float("-inf")


def acceptable_fingerprints(
    policy: FingerprintPolicy,
    state: ModelFingerprints | None,
    grace: float,
    now: float,
    flap_window: float = 0.0,
) -> Sequence[str] | None:
    """Which stored fingerprints may be served, preferred first: None means any (pin).

    `follow` serves the current fingerprint, and those answered with within `grace` seconds.
    A model alternating within `flap_window` serves every fingerprint it answered with in that
    window since its current one first answered, oldest first, so that one request keeps one
    answer while the current one flips."""
    if policy is FingerprintPolicy.PIN:
        return None
    if state is None:
        return ()
    if alternating(state, now, flap_window):
        since = max(now - flap_window, _first_seen(state, state.current))
        generation = [s.fingerprint for s in state.seen if s.last_seen >= since]
        return generation if state.current in generation else [state.current, *generation]
    if grace <= 0:
        return (state.current,)
    recent = [
        seen.fingerprint
        for seen in state.seen
        if seen.fingerprint != state.current and now - seen.last_seen <= grace
    ]
    return [state.current, *recent]


STALE_STATUSES = frozenset({500, 502, 503, 504})
"""The upstream answers that count as errors for stale-if-error (RFC 5861 section 4)."""


def stale_window(setting: int, directive: int | None) -> int:
    """Seconds of age within which a stored answer may stand in for a failed upstream."""
    return max(setting, directive or 0)


def is_fresh(stored_at: float, now: float, ttl: int, max_age: int | None) -> bool:
    """An entry is served only within its TTL and younger than the client's max-age."""
    age = now - stored_at
    if ttl and age >= ttl:
        return False
    return max_age is None or age < max_age
