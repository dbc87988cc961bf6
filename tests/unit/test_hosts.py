"""The Host names a proxy serves, decided from its listen address and --allowed-host alone."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import SettingError, load
from proxy.core.hosts import (
    MEMO,
    AllowedHosts,
    Host,
    HostCheck,
    Verdict,
    allowed_hosts,
    is_loopback,
    parse_allowed,
    read_host,
)

LOOPBACK = HostCheck(allowed_hosts("127.0.0.1", ()))


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"],
)
def test_loopback_listen_addresses(address: str) -> None:
    assert is_loopback(address)


@pytest.mark.parametrize(
    "address",
    ["0.0.0.0", "::", "", "10.1.2.3", "192.168.0.7", "proxy", "localhost.evil", "fe80::1"],
)
def test_addresses_that_others_reach_or_that_name_anything(address: str) -> None:
    assert not is_loopback(address)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost", Host("localhost", False)),
        ("LocalHost:8080", Host("localhost", False)),
        ("localhost.:8080", Host("localhost", False)),
        ("localhost:", Host("localhost", False)),
        ("127.0.0.1:8080", Host("127.0.0.1", True)),
        ("127.0.0.1.", Host("127.0.0.1", True)),
        ("[::1]", Host("::1", True)),
        ("[0:0:0:0:0:0:0:1]:8080", Host("::1", True)),
        # written ::ffff:7f00:1 up to Python 3.12, ::ffff:127.0.0.1 from 3.13: either way one name
        ("[::FFFF:127.0.0.1]", Host(str(ipaddress.IPv6Address("::ffff:7f00:1")), True)),
        ("10.0.0.7:8080", Host("10.0.0.7", True)),
        ("proxy_1:8080", Host("proxy_1", False)),
        ("127.0.0.1.evil.example", Host("127.0.0.1.evil.example", False)),
        ("127.1", Host("127.1", False)),  # not an address as HTTP writes one
        ("2130706433", Host("2130706433", False)),
    ],
)
def test_host_values_read(value: str, expected: Host) -> None:
    assert read_host(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        ":8080",
        "::1",  # an IPv6 address needs its brackets
        "[::1",
        "[::1]x",
        "[fe80::1%eth0]",
        "[v1.fe]",
        "[127.0.0.1]",
        "localhost..",
        ".localhost",
        "localhost:80:80",
        "localhost:123456",
        "localhost:http",
        "evil.example@localhost",
        "local host",
        "localhost\x00",
        "localhost\r\nX: y",
        "loc\u0430lhost",  # a Cyrillic a
        "\u212aube",  # KELVIN SIGN, which lower() makes an ASCII k
        "a/b",
        "a\\b",
        "*",
    ],
)
def test_values_that_are_no_host(value: str) -> None:
    assert read_host(value) is None
    assert LOOPBACK.verdict(value) is Verdict.INVALID


@pytest.mark.parametrize(
    "value",
    [
        "localhost",
        "localhost:8080",
        "LOCALHOST:9999",
        "localhost.:8080",
        "127.0.0.1:8080",
        "127.0.0.1",
        "127.200.0.1:8080",
        "[::1]:8080",
        "[::1]",
        "10.1.2.3:8080",  # any address: nothing rebinds one
        "0.0.0.0:8080",
    ],
)
def test_a_loopback_listener_serves_localhost_and_addresses(value: str) -> None:
    assert LOOPBACK.verdict(value) is Verdict.ALLOWED


@pytest.mark.parametrize(
    "value",
    [
        "evil.example:8080",
        "evil.example",
        "EVIL.EXAMPLE.",
        "127.0.0.1.evil.example:8080",
        "localhost.evil.example",
        "evil.localhost",
        "my-laptop",
        "127.1:8080",
    ],
)
def test_a_loopback_listener_refuses_every_other_name(value: str) -> None:
    assert LOOPBACK.verdict(value) is Verdict.REFUSED


def test_any_other_listener_serves_any_name_unless_names_are_given() -> None:
    assert allowed_hosts("0.0.0.0", ()) == AllowedHosts(None)
    assert allowed_hosts("10.1.2.3", ()) == AllowedHosts(None)
    check = HostCheck(allowed_hosts("0.0.0.0", parse_allowed("proxy")))
    assert not check.any
    assert check.verdict("proxy:8080") is Verdict.ALLOWED
    assert check.verdict("localhost:8080") is Verdict.ALLOWED
    assert check.verdict("10.244.1.7:8080") is Verdict.ALLOWED  # a probe, Prometheus
    assert check.verdict("evil.example:8080") is Verdict.REFUSED


def test_names_given_add_to_localhost_on_loopback() -> None:
    check = HostCheck(allowed_hosts("127.0.0.1", parse_allowed("my-laptop.lan, Proxy.")))
    for value in ("my-laptop.lan:8080", "proxy", "PROXY.:1", "localhost"):
        assert check.verdict(value) is Verdict.ALLOWED, value
    assert check.verdict("other.lan") is Verdict.REFUSED


def test_a_domain_serves_itself_and_every_name_under_it() -> None:
    check = HostCheck(allowed_hosts("0.0.0.0", parse_allowed(".svc.cluster.local")))
    for value in ("svc.cluster.local", "proxy.ns.svc.cluster.local:8080"):
        assert check.verdict(value) is Verdict.ALLOWED, value
    for value in ("evilsvc.cluster.local", "svc.cluster.local.evil.example", "cluster.local"):
        assert check.verdict(value) is Verdict.REFUSED, value


@pytest.mark.parametrize("listen", ["127.0.0.1", "0.0.0.0"])
def test_a_star_serves_any_name(listen: str) -> None:
    check = HostCheck(allowed_hosts(listen, parse_allowed("proxy,*")))
    assert check.any


def test_a_listen_name_is_served_once_names_are_checked() -> None:
    check = HostCheck(allowed_hosts("my-host.lan", parse_allowed("proxy")))
    assert check.verdict("my-host.lan:8080") is Verdict.ALLOWED
    assert HostCheck(allowed_hosts("localhost", ())).verdict("localhost:1") is Verdict.ALLOWED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("proxy", ("proxy",)),
        (" Proxy. , .Example.COM,proxy", ("proxy", ".example.com")),
        ("*", ("*",)),
        ("[::1]", ("::1",)),
    ],
)
def test_the_setting_reads_names_as_they_are_compared(text: str, expected: tuple[str, ...]) -> None:
    assert parse_allowed(text) == expected


@pytest.mark.parametrize(
    "text", ["proxy:8080", "[::1]:8080", ".", "..example.com", "a b", "*.example.com", ".10.0.0.1"]
)
def test_the_setting_refuses_what_is_no_name(text: str) -> None:
    with pytest.raises(SettingError) as info:
        load({"allowed_host": text}, {})
    assert str(info.value).startswith("--allowed-host / REPRO_ALLOWED_HOST: invalid value")


def test_the_setting_is_repeatable_and_read_from_the_environment() -> None:
    assert load({"allowed_host": ["a", "b,c"]}, {}).allowed_host == ("a", "b", "c")
    assert load({}, {"REPRO_ALLOWED_HOST": "proxy"}).allowed_host == ("proxy",)


def test_verdicts_are_remembered_up_to_a_bound_and_a_flood_leaves_room_for_the_next() -> None:
    check = HostCheck(allowed_hosts("127.0.0.1", ()))
    for n in range(MEMO * 3 + 7):
        assert check.verdict(f"name-{n}") is Verdict.REFUSED
        assert len(check._verdicts) <= MEMO
    assert check.verdict("localhost:8080") is Verdict.ALLOWED
    assert check._verdicts["localhost:8080"] is Verdict.ALLOWED


@given(st.text(max_size=40))
def test_every_text_gets_a_verdict_and_only_a_read_host_is_allowed(value: str) -> None:
    verdict = LOOPBACK.verdict(value)
    host = read_host(value)
    assert (verdict is Verdict.INVALID) is (host is None)
    if verdict is Verdict.ALLOWED:
        assert host is not None and (host.address or host.name == "localhost")
