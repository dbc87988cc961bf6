"""Which headers carry a tenant's credential, and the HMAC input made of them (pure)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import SettingError, load
from proxy.core.credentials import (
    STANDARD,
    Carriers,
    Credentials,
    extract,
    hop_by_hop,
    in_query,
    material,
    names,
    parse_names,
    scope,
    shape,
    split_query,
    stranger,
    upstream_headers,
    with_query,
)
from proxy.core.policy import ANONYMOUS, CacheScope, cache_scope
from proxy.errors import InvalidHeader

SECRET = b"s" * 32


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def tenant(*pairs: tuple[str, str], carriers: tuple[str, ...] = STANDARD) -> str:
    return scope(extract(headers(*pairs), carriers), SECRET)


def test_every_standard_credential_header_of_any_scheme_is_read() -> None:
    found = extract(
        headers(
            ("Authorization", "Basic YTpi"),
            ("API-Key", "az"),
            ("X-Api-Key", "an"),
            ("Accept", "x"),
        )
    )
    assert found == (("authorization", "Basic YTpi"), ("api-key", "az"), ("x-api-key", "an"))


def test_anonymous_only_when_no_credential_header_has_a_value() -> None:
    assert tenant() == ANONYMOUS
    assert tenant(("Authorization", "  "), ("x-api-key", "")) == ANONYMOUS
    assert tenant(("Authorization", "Basic YTpi")) != ANONYMOUS


def test_any_differing_credential_value_is_another_tenant() -> None:
    base = [("Authorization", "Bearer sk-a"), ("x-api-key", "k1")]
    tenants = {
        tenant(*base),
        tenant(base[0], ("x-api-key", "k2")),
        tenant(base[0]),
        tenant(base[1]),
        tenant(("Authorization", "Basic sk-a"), base[1]),
        tenant(*base, ("x-api-key", "k1")),  # an identical line: one reading, another input
    }
    assert len(tenants) == 6


def test_a_credential_repeated_with_another_value_is_refused_not_scoped() -> None:
    """The scope is order-blind, an upstream reads one line: see test_e2e_duplicate_headers."""
    with pytest.raises(InvalidHeader, match="x-api-key"):
        tenant(("x-api-key", "k1"), ("Authorization", "Bearer sk-a"), ("X-Api-Key", "k3"))


def test_header_name_case_and_order_do_not_matter() -> None:
    one = tenant(("Authorization", "Bearer sk-a"), ("X-API-KEY", "k"))
    assert one == tenant(("x-api-key", "k"), ("authorization", "Bearer sk-a"))


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ((("x-api-key", "a,b"),), (("x-api-key", "a"), ("x-api-key", "b"))),
        ((("x-api-key", "ab"),), (("x-api-key", "a"), ("x-api-key", "b"))),
        ((("api-key", "x"), ("x-api-key", "y")), (("api-key", "x:y"),)),
        ((("api-key", "1:a,"),), (("api-key", "1"), ("x-api-key", "a"))),
        ((("x-api-key", "k"),), (("x-k", "api-key"),)),
    ],
)
def test_no_two_sets_of_credentials_give_the_same_hmac_input(
    left: Credentials, right: Credentials
) -> None:
    assert material(left) != material(right)


def test_a_lone_bearer_or_api_key_keeps_the_scope_it_always_had() -> None:
    legacy = cache_scope("sk-a", CacheScope.KEY, SECRET)
    assert tenant(("Authorization", "Bearer sk-a")) == legacy
    assert tenant(("Authorization", "bearer  sk-a ")) == legacy
    assert tenant(("api-key", "sk-a")) == legacy
    assert tenant(("x-api-key", "sk-a")) != legacy
    assert material((("authorization", "Bearer \x00x"),)).startswith(b"\x00")


def test_undecodable_header_bytes_are_hashed_as_sent() -> None:
    assert tenant(("x-api-key", "\udcff")) != tenant(("x-api-key", "\udcfe"))


def test_extra_names_are_read_only_when_configured() -> None:
    carriers = names(["X-Org-Id"])
    assert carriers == (*STANDARD, "x-org-id")
    assert tenant(("X-Org-Id", "1")) == ANONYMOUS
    assert tenant(("X-Org-Id", "1"), carriers=carriers) != tenant(
        ("x-org-id", "2"), carriers=carriers
    )


@pytest.mark.parametrize(
    "name",
    ["apikey", "X-Apikey", "x-litellm-api-key", "Helicone-Auth", "X-Auth-Token", "Cookie",
     "x-client-secret", "X-Access-Token", "x-myapikey", "X-Password", "X-JWT-Assertion",
     "X-Bearer"],
)  # fmt: skip
def test_a_name_that_says_it_holds_a_credential_is_read_as_one(name: str) -> None:
    assert tenant((name, "1")) != ANONYMOUS
    assert tenant((name, "1")) != tenant((name, "2"))
    assert name.lower() in Carriers(STANDARD)


@pytest.mark.parametrize(
    "name",
    ["Idempotency-Key", "X-Repro-Api-Key", "Proxy-Authorization", "OpenAI-Organization",
     "OpenAI-Project", "OpenAI-Beta", "x-stainless-retry-count", "Keep-Alive", "X-Monkey",
     "x-max-tokens"],
)  # fmt: skip
def test_other_names_are_not(name: str) -> None:
    assert tenant((name, "1")) == ANONYMOUS
    assert name.lower() not in Carriers(STANDARD)


def test_setting_names_are_validated_and_lower_cased() -> None:
    assert parse_names(" X-A, x-b ,,") == ("x-a", "x-b")
    for bad in ("x a", "x:y", "X-Repro-Namespace"):
        with pytest.raises(ValueError, match="x"):
            parse_names(bad)


def test_the_setting_joins_repeated_flags_and_comma_separated_environment() -> None:
    assert load({"credential_header": ["X-A", "x-b,x-c"]}, {}).credential_header == (
        "x-a",
        "x-b",
        "x-c",
    )
    assert load({}, {"REPRO_CREDENTIAL_HEADER": "X-Tenant"}).credential_header == ("x-tenant",)
    assert load({}, {}).credential_header == ()
    with pytest.raises(SettingError, match="--credential-header / REPRO_CREDENTIAL_HEADER"):
        load({"credential_header": ["bad name"]}, {})


def test_the_key_check_timeout_setting() -> None:
    assert load({}, {}).key_check_timeout == 5.0
    assert load({}, {"REPRO_KEY_CHECK_TIMEOUT": "1.5"}).key_check_timeout == 1.5
    with pytest.raises(SettingError, match="--key-check-timeout"):
        load({"key_check_timeout": "-1"}, {})


def test_a_stranger_has_the_same_shape_and_none_of_the_values() -> None:
    real = (("authorization", "Basic YTpi"), ("x-api-key", "k"))
    made_up = dict(stranger(real))
    assert list(made_up) == ["authorization", "x-api-key"]
    assert made_up["authorization"].startswith("Basic ") and made_up["x-api-key"] != "k"
    assert shape(real) == shape(stranger(real)) == shape((("authorization", "basic x"), real[1]))
    assert shape(real) != shape((("authorization", "Bearer k"), real[1]))
    assert len(shape((("x-" + "a" * 8000 + "-token", "t"),) * 128)) == 64  # a digest, bounded
    assert dict(stranger(real)) != made_up


def test_a_query_without_credential_parameters_is_kept_byte_for_byte() -> None:
    for query in ("", "api-version=2024-06-01", "a=%20b&c=d+e&&f", "keyword=x&monkey=y"):
        assert split_query(query) == (query, ())


def test_a_parameter_named_as_a_credential_is_one() -> None:
    kept, found = split_query("api-version=1&apikey=k1&access_token=t1&max_tokens=9")
    assert kept == "api-version=1&max_tokens=9"
    assert found == (("?apikey", "k1"), ("?access_token", "t1"))


def test_credential_parameters_leave_the_query_and_become_credentials() -> None:
    kept, found = split_query("api-version=1&subscription-key=s%2Fk&x=2&KEY=g&api_key=&%6Bey=h")
    assert kept == "api-version=1&x=2&api_key="  # an empty one carries nothing, and is sent
    assert found == (("?subscription-key", "s%2Fk"), ("?key", "g"), ("?key", "h"))
    assert in_query(found) == "subscription-key=s%2Fk&key=g&key=h"
    assert with_query("/v1/models", "", found) == "/v1/models?" + in_query(found)
    assert with_query("/v1/x", "a=1", ()) == "/v1/x?a=1" and with_query("/v1/x", "", ()) == "/v1/x"
    assert upstream_headers((("authorization", "Bearer a"), *found)) == {
        "authorization": "Bearer a"
    }


def test_a_key_in_the_query_makes_a_tenant_as_one_in_a_header_does() -> None:
    assert scope(split_query("subscription-key=a")[1], b"s") != scope((), b"s")
    assert scope(split_query("key=a")[1], b"s") != scope(split_query("key=b")[1], b"s")


def test_a_connection_header_naming_a_credential_is_found_in_any_of_its_values() -> None:
    assert hop_by_hop(["keep-alive", " Upgrade , X-API-KEY "]) == "x-api-key"
    assert hop_by_hop(["keep-alive, x-gateway-key"], ("authorization", "x-gateway-key")) == (
        "x-gateway-key"
    )
    assert hop_by_hop(["keep-alive, close", "x-authorization"]) is None
    assert hop_by_hop(["keep-alive, X-Auth-Token"], Carriers(("authorization",))) == (
        "x-auth-token"
    )  # named as a credential, though no setting lists it


def test_a_credential_after_a_semicolon_is_a_credential() -> None:
    """Rack (and Python before 3.9.2) split a query at `;` as at `&`."""
    assert split_query("a=1;key=sk-x&b=2") == ("a=1&b=2", (("?key", "sk-x"),))
    assert split_query("a=1;b=2") == ("a=1;b=2", ())


@pytest.mark.parametrize(
    "query",
    [
        "sig=SAS-SIGNATURE&a=1",  # an Azure SAS
        "a=1&X-Amz-Signature=AWS-SIGNATURE",  # a presigned S3 URL
        "a=1&signature=SIGNED",
        "code=FUNCTION-KEY&a=1",  # an Azure Functions key
        "jwt=HEADER.PAYLOAD.SIG&a=1",  # a token some gateways take in a URL
        "a=1&bearer=TOKEN",
    ],
)
def test_a_signature_or_function_key_in_the_query_is_a_credential(query: str) -> None:
    """As `sealing.SIGNING` reads a URL in a body, so the request's own query: neither keyed
    nor kept in a cassette. Before: written to the cassette's `query` in the clear."""
    kept, found = split_query(query)
    assert kept == "a=1"
    assert len(found) == 1 and found[0][1] not in kept


def test_a_header_named_signature_is_no_credential() -> None:
    """An HTTP message signature is new per request: read as a credential it would make every
    request a tenant of its own."""
    assert extract(CIMultiDictProxy(CIMultiDict({"Signature": "sig1=:abc:"}))) == ()
