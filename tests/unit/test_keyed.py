"""Which request headers the cache key covers (proxy/core/keyed.py): deny by default, a request
with only inert headers keeps the key it always had, and the key reads every keyed line."""

from __future__ import annotations

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Settings
from proxy.core import keyed
from proxy.core.call import Asked, Call, prepare_with
from proxy.core.canonical import CHAT, parse_body, request_key
from proxy.core.codec import Codec
from proxy.core.credentials import STANDARD
from proxy.core.entry import Entry
from proxy.core.keyed import Keying, digest, parse_unkeyed
from proxy.core.policy import SHARED, CacheScope, refused_by_upstream
from proxy.errors import InvalidHeader
from proxy.server.caching import UPSTREAM_SKIP
from proxy.store import cassette

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
RAW = orjson.dumps(BODY)
SEEDED = parse_body(orjson.dumps({**BODY, "seed": 12345}))  # as the default seed leaves it
RULES = Settings(upstream="http://127.0.0.1:9/v1")
SHARED_RULES = Settings(upstream="http://127.0.0.1:9/v1", cache_scope=CacheScope.SHARED)

SDK = [  # what openai 3.x sends with every call (read from a real client), and tracing
    ("Host", "127.0.0.1:8080"),
    ("Accept-Encoding", "gzip, deflate"),
    ("Connection", "keep-alive"),
    ("Authorization", "Bearer sk-a"),
    ("Accept", "application/json"),
    ("Content-Type", "application/json"),
    ("User-Agent", "AsyncOpenAI/Python 3.60.0"),
    ("x-stainless-lang", "python"),
    ("x-stainless-package-version", "3.60.0"),
    ("x-stainless-os", "Linux"),
    ("x-stainless-arch", "x64"),
    ("x-stainless-runtime", "CPython"),
    ("x-stainless-runtime-version", "3.11.7"),
    ("x-stainless-async", "async:asyncio"),
    ("x-stainless-retry-count", "1"),
    ("x-stainless-read-timeout", "600"),
    ("Content-Length", "57"),
    ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ("X-Request-ID", "f3b0"),
    ("X-Amzn-Trace-Id", "Root=1-5759e988-bd862e3fe1be46a994272793"),
    ("X-B3-TraceId", "80f198ee56343ba864fe8b2a57d3eff7"),
    ("Idempotency-Key", "stainless-python-retry-1"),
    ("Cache-Control", "max-age=60"),
    ("X-Forwarded-For", "10.0.0.7"),
    ("X-Repro-Namespace", "suite"),
    ("sec-fetch-mode", "cors"),  # Node's fetch adds it
    ("Accept-Language", "*"),  # and this: any language, as without it
]


def headers(pairs: list[tuple[str, str]]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def call_of(
    pairs: list[tuple[str, str]], keying: Keying | None = None, rules: Settings = RULES
) -> Call:
    return prepare_with(rules, "tenant", Asked.of(CHAT, "", RAW, headers(pairs), keying=keying))


def lines(pairs: list[tuple[str, str]], keying: Keying | None = None) -> keyed.HeaderLines:
    return (keying or Keying()).lines(headers(pairs))


def test_a_request_with_only_inert_headers_keeps_the_key_it_always_had() -> None:
    """No cache invalidation on upgrade: the key of a request without keyed headers is the one
    `request_key` always gave (its bytes are pinned in test_canonical's TestKeysStayStable)."""
    plain = request_key(CHAT, "tenant", "suite", SEEDED)
    keying = Keying()
    for _ in range(2):  # the first request teaches the spellings, the second takes the short way
        call = call_of(SDK, keying)
        assert call.key == plain
        assert call.vary == "" and call.headers == ()


def test_a_routing_header_changes_the_key_and_travels_with_the_call() -> None:
    call = call_of([*SDK, ("x-portkey-custom-host", "https://evil.example")])
    assert call.key != call_of(SDK).key
    assert call.headers == (("x-portkey-custom-host", "https://evil.example"),)
    assert call.vary == digest(call.headers) and len(call.vary) == 64


@pytest.mark.parametrize(
    "name",
    [
        "x-portkey-provider",
        "x-portkey-config",
        "x-portkey-custom-host",
        "Helicone-Target-Url",
        "X-Host-Override",
        "cf-aig-cache-ttl",
        "OpenAI-Organization",
        "OpenAI-Project",
        "OpenAI-Beta",
        "X-Made-Up-Route",
        "Accept-Language",
    ],
)
def test_any_header_not_known_inert_is_keyed(name: str) -> None:
    assert lines([(name, "1")]) == ((name.lower(), "1"),)
    assert name.lower() in Keying() and name.lower() in Keying(shared=True)


def test_any_language_is_keyed_as_none_asked_and_a_language_asked_is_keyed() -> None:
    """`Accept-Language: *`, which Node's fetch adds to every OpenAI JS SDK call, asks what no
    Accept-Language asks: the JS SDK's key is the Python SDK's. A language named is keyed,
    and the name still is for Vary (an upstream that varies by it stores per language)."""
    assert lines([("Accept-Language", "*")]) == ()
    assert call_of(SDK).key == call_of(SDK[:-1]).key  # SDK ends with it
    for value in ("fa-IR", "*;q=0.5", "en, *"):
        assert lines([("Accept-Language", value)]) == (("accept-language", value),)
    with pytest.raises(InvalidHeader):  # beside a language, as any two lines that disagree
        lines([("Accept-Language", "*"), ("Accept-Language", "fa")])
    assert lines([("Accept-Language", "*"), ("OpenAI-Beta", "v")]) == (("openai-beta", "v"),)
    assert "accept-language" in Keying()


def test_the_name_is_keyed_whatever_its_case_and_the_value_exactly() -> None:
    keying = Keying()
    spelled = [
        lines([(name, "v")], keying) for name in ("OpenAI-Beta", "openai-beta", "OPENAI-BETA")
    ]
    assert spelled == [(("openai-beta", "v"),)] * 3
    assert lines([("OpenAI-Beta", "V")], keying) != spelled[0]
    assert lines([("OpenAI-Beta", "v ")], keying) != spelled[0]


def test_every_line_of_a_repeated_header_counts() -> None:
    both = lines([("X-Route", "a"), ("X-Route", "a")])
    assert both == (("x-route", "a"), ("x-route", "a"))
    assert digest(both) != digest(lines([("X-Route", "a")]))
    assert digest(both) != digest(lines([("X-Route", "a,a")]))
    assert digest(both) != digest(lines([("X-Route", "a, a")]))


def test_a_keyed_header_repeated_with_another_value_is_refused() -> None:
    """An upstream or gateway may read only one of the lines the key covers (see
    test_e2e_duplicate_headers); in `shared` scope names read as credentials are keyed too."""
    with pytest.raises(InvalidHeader, match="x-route"):
        lines([("X-Route", "a"), ("X-Other", "c"), ("x-route", "b")])
    with pytest.raises(InvalidHeader, match="x-auth-token"):
        lines([("X-Auth-Token", "a"), ("X-Auth-Token", "b")], Keying(shared=True))
    cookies = [("Cookie", "a=1"), ("Cookie", "b=2")]  # joined by every reader (RFC 9113 8.2.3)
    assert lines(cookies, Keying(shared=True)) == (("cookie", "a=1"), ("cookie", "b=2"))


def test_a_header_connection_names_is_not_keyed_as_it_is_never_sent() -> None:
    sent = [("X-Route", "a"), ("X-Other", "b"), ("Connection", "keep-alive")]
    dropped = [*sent, ("Connection", "close,  x-ROUTE")]
    assert lines(dropped) == (("x-other", "b"),)
    assert lines(sent) == (("x-other", "b"), ("x-route", "a"))


def test_other_names_may_come_in_any_order() -> None:
    one = lines([("X-B", "1"), ("X-A", "1"), ("User-Agent", "u"), ("X-A", "1")])
    other = lines([("X-A", "1"), ("traceparent", "t"), ("X-A", "1"), ("X-B", "1")])
    assert one == other == (("x-a", "1"), ("x-a", "1"), ("x-b", "1"))


def test_values_with_bytes_no_text_decodes_are_keyed_as_those_bytes() -> None:
    """aiohttp hands a header's undecodable bytes over as surrogates: each distinct byte
    string keys apart, and none stops the key from being computed."""
    odd = [
        lines([("X-Route", "\udcff")]),
        lines([("X-Route", "\udcfe")]),
        lines([("X-Route", "\u00ff")]),  # the text ÿ: UTF-8 c3 bf, not the byte ff
        lines([("X-Route", "a\x00b")]),
        lines([("X-Route", "2:x-a,1:b")]),
    ]
    digests = {digest(found) for found in odd}
    assert len(digests) == len(odd)
    call = call_of([("X-Route", "\udcff\udcfe")])
    assert len(call.key) == 64 and call.vary == digest((("x-route", "\udcff\udcfe"),))


def test_names_and_values_cannot_be_shifted_into_each_other() -> None:
    assert digest((("x-a", "bx-c"),)) != digest((("x-ab", "x-c"),))
    assert digest((("x-a", "b"), ("x-c", "d"))) != digest((("x-a", "b1:x-c1:d"),))


def test_what_never_goes_upstream_as_sent_is_never_keyed() -> None:
    """Hop-by-hop, framing, Host and the rerouting headers a cached route drops, the proxy's
    own X-Repro-*, and what the key covers otherwise (the body is sent as plain JSON)."""
    keying = Keying()
    for name in UPSTREAM_SKIP:
        assert not keying.keys(name), name
    for name in ("x-repro-namespace", "x-repro-anything", "proxy-authorization"):
        assert not keying.keys(name)


def test_credentials_are_the_tenants_never_keyed_as_headers() -> None:
    """In `key` scope they partition the cache already; in `shared` scope every accepted key
    of a listed credential header shares the answers by design. The key stays exactly the
    scope's."""
    creds = [("api-key", "az"), ("X-Auth-Token", "t")]  # besides SDK's Authorization
    assert lines([*SDK, *creds]) == ()
    assert Keying(("x-auth-token",), shared=True).lines(headers([*SDK, *creds])) == ()
    listed = Keying(carriers=(*STANDARD, "x-auth-token"), shared=True)
    assert listed.lines(headers([*SDK, *creds])) == ()
    assert call_of([*SDK, *creds], rules=SHARED_RULES).key == request_key(
        CHAT, SHARED, "suite", SEEDED
    )


def test_in_shared_scope_a_name_read_as_a_credential_only_for_its_words_is_keyed() -> None:
    """There a misread name would join two requests the upstream answers apart
    (`cf-aig-cache-key` names a gateway's cache entry); in `key` scope it partitions."""
    named = [("cf-aig-cache-key", "planted"), ("X-Auth-Token", "t")]
    assert lines(named) == ()
    assert Keying(shared=True).lines(headers(named)) == (
        ("cf-aig-cache-key", "planted"),
        ("x-auth-token", "t"),
    )
    assert "cf-aig-cache-key" in Keying(shared=True) and "cf-aig-cache-key" in Keying()


def test_a_cookie_is_keyed_in_shared_scope_only() -> None:
    """In `key` scope it is part of the tenant; in `shared` scope it would be no input at all,
    and a cookie carries state besides identity (a sticky backend, an experiment)."""
    cookie = [("Cookie", "route=evil")]
    assert lines(cookie) == ()
    assert Keying(shared=True).lines(headers(cookie)) == (("cookie", "route=evil"),)
    assert "cookie" in Keying() and "cookie" in Keying(shared=True)


def test_the_operators_names_are_left_out_exactly_or_by_prefix() -> None:
    keying = Keying(parse_unkeyed("X-Tenant-Trace, x-myco-*"))
    assert lines([("x-tenant-trace", "1"), ("X-MyCo-Span", "2"), ("X-MyCo", "3")], keying) == (
        ("x-myco", "3"),
    )
    assert "x-tenant-trace" not in keying and "x-myco-span" not in keying


@pytest.mark.parametrize("text", ["*", "x-*-id", "x-repro-thing", "bad name"])
def test_an_unkeyed_header_setting_that_is_no_name_nor_prefix_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected|read by the proxy"):
        parse_unkeyed(text)


@pytest.mark.parametrize(
    ("vary", "shared", "refused"),
    [
        ("OpenAI-Organization", False, False),
        ("Accept-Encoding, openai-organization, X-Portkey-Provider", True, False),
        ("Authorization", False, False),
        ("Authorization", True, True),
        ("User-Agent", False, True),
        ("traceparent", False, True),
        ("X-Stainless-Lang", False, True),
        ("X-Forwarded-Host", False, True),
        ("*", False, True),
    ],
)
def test_a_vary_is_covered_by_what_the_key_reads(vary: str, shared: bool, refused: bool) -> None:
    """A header the key reads by its value makes a `Vary` naming it storable, per value; one
    the key leaves out (inert, dropped, a credential in shared scope) or `*` still refuses."""
    reason = refused_by_upstream((), (vary,), Keying(shared=shared))
    assert (reason == "Vary") is refused


def test_the_request_memo_tells_requests_apart_by_their_keyed_headers() -> None:
    keying = Keying()
    plain = Asked.of(CHAT, "", RAW, headers(SDK), keying=keying)
    routed = Asked.of(CHAT, "", RAW, headers([*SDK, ("X-Route", "x" * 1000)]), keying=keying)
    assert plain != routed
    assert routed.size >= plain.size + 1000
    assert plain == Asked.of(CHAT, "", RAW, headers(list(reversed(SDK))), keying=keying)


def test_remembered_spellings_stay_bounded_and_correct() -> None:
    keying = Keying()
    for number in range(keyed.MAX_SPELLINGS + 10):
        assert lines([(f"X-Stainless-Made-Up-{number}", "1"), ("x-route", "1")], keying) == (
            ("x-route", "1"),
        )
    assert len(keying._unkeyed_spellings) <= keyed.MAX_SPELLINGS
    assert lines([("User-Agent", "u")], keying) == ()


def test_long_spellings_are_never_remembered() -> None:
    """Names as long as a header line allows, thousands of them, would hold tens of MiB."""
    keying = Keying()
    long_name = "X-Stainless-" + "a" * 8000
    for _ in range(2):
        assert lines([(long_name, "1"), ("x-route", "1")], keying) == (("x-route", "1"),)
    assert long_name not in keying._unkeyed_spellings
    assert "X-Stainless-Lang" not in keying._unkeyed_spellings
    lines([("X-Stainless-Lang", "python")], keying)
    assert "X-Stainless-Lang" in keying._unkeyed_spellings


def test_a_cassette_line_names_the_digest_never_the_header_and_keys_again_alike() -> None:
    pairs = [*SDK, ("x-portkey-config", "pc-secret-config")]
    call = call_of(pairs, Keying(shared=True), SHARED_RULES)
    entry = Entry(
        body=b'{"choices": [{"message": {"content": "x"}}], "system_fingerprint": "fp_a"}',
        content_type="application/json",
        fingerprint="fp_a",
        stored_at=1.0,
        model="gpt-4o-mini",
        route=CHAT,
        namespace=call.namespace,
        request=call.body,
        vary=call.vary,
        seed=call.seed,
        seed_source=call.seed_source,
    )
    record = cassette.to_record(call.key, entry)
    assert record["vary"] == call.vary
    assert b"pc-secret-config" not in orjson.dumps(record)
    assert cassette.from_record(record, SHARED).key == call.key
    plain = {name: value for name, value in record.items() if name != "vary"}
    assert cassette.from_record(plain, SHARED).key != call.key
    assert Codec(level=1).unpack(Codec(level=1).pack(entry)).vary == call.vary
    with pytest.raises(cassette.CassetteError, match="vary"):
        cassette.from_record({**record, "vary": "x-portkey-config: pc"}, SHARED)
