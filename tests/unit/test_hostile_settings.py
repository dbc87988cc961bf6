"""Hostile values of every kind, for every setting of `serve`: each is refused by `load` with
one line naming the flag and the variable, whether it came as a flag or from the environment,
and a secret is never repeated. The values are the ones a user types by mistake (a stray
space, a `1_000`, a value copied from a right-to-left document, a URL with a password)."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from proxy import values
from proxy.config import SettingError, load
from proxy.options import OPTIONS, Option

BY_NAME = {option.name: option for option in OPTIONS}
NUMBERS = [
    o.name
    for o in OPTIONS
    if o.default is not None and o.default[:1].isdigit() and o.name != "host"
] + ["max_connections"]  # auto, or a number
HUGE = [
    "99999999999999999999",
    "1e400",
    "\u0661\u0662",
    "\u06630",
    "\u00b2",
    "1_0",
    "nan",
    "inf",
    "9" * 5000,
]


def refused(option: Option, text: str, *, env: bool) -> str:
    flags: dict[str, str | list[str] | None] = {} if env else {option.name: text}
    with pytest.raises(SettingError) as info:
        load(flags, {option.env: text} if env else {})
    message = str(info.value)
    assert message.startswith(f"{option.flag} / {option.env}: "), message
    assert "\n" not in message
    assert len(message) < 400
    return message


def test_the_numeric_settings_are_all_here() -> None:
    assert len(NUMBERS) == 27
    assert {"port", "ttl", "max_body", "upstream_timeout", "workers"} <= set(NUMBERS)


@pytest.mark.parametrize("env", [False, True], ids=["flag", "env"])
@pytest.mark.parametrize("text", HUGE, ids=lambda t: t[:12])
@pytest.mark.parametrize("name", NUMBERS)
def test_a_number_that_is_not_plain_ascii_or_fits_nothing_is_refused(
    name: str, text: str, env: bool
) -> None:
    refused(BY_NAME[name], text, env=env)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("ttl", str(10 * 365 * 24 * 3600 + 1)),
        ("stale_if_error", "99999999999"),
        ("upstream_timeout", "1e300"),
        ("keepalive_timeout", "1e20"),
        ("probe_interval", "315360001"),
        ("max_body", "8589934592G"),
        ("near_cache", "9223372036854775808"),
        ("max_connections", "2147483648"),
        ("upstream_connections", "99999999999"),
        ("workers", "1025"),
        ("store", "memory://?max_bytes=99999999999999999999G"),
    ],
)
def test_a_number_beyond_what_the_proxy_can_use_is_refused(name: str, text: str) -> None:
    # An integer past 2^64 made the start-up log line a logging traceback (orjson), and a
    # timeout of 1e300 overflows the timers under the proxy.
    refused(BY_NAME[name], text, env=False)


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("ttl", "315360000", 315360000),
        ("upstream_timeout", " 600 ", 600.0),
        ("fingerprint_grace", "-0", 0.0),
        ("max_body", "1G", 1024**3),
        ("workers", "1", 1),
        ("port", "+8080", 8080),
        ("verify_rate", ".5", 0.5),
    ],
)
def test_plain_numbers_still_pass(name: str, text: str, value: object) -> None:
    assert getattr(load({name: text}, {}), name) == value


def test_a_unit_in_another_script_is_not_a_crash() -> None:
    # 'K' (KELVIN SIGN) matched the case-insensitive K of the size pattern and then was no
    # key of the unit table: a KeyError traceback at start.
    message = refused(BY_NAME["max_body"], "1\u212a", env=False)
    assert "expected a number of bytes" in message


def test_a_long_wrong_value_is_shown_cut() -> None:
    message = refused(BY_NAME["ttl"], "9" * 5000, env=True)
    assert "…" in message
    assert "9" * 100 not in message


@pytest.mark.parametrize(
    "text", ["", " ", "\t", "\u0661\u0662\u0667.0.0.1", "local\nhost", "local host"]
)
def test_a_host_to_listen_on_that_names_none_is_refused(text: str) -> None:
    # An empty --host made aiohttp listen on every interface, where an empty REPRO_HOST
    # means the default (loopback).
    message = refused(BY_NAME["host"], text, env=False)
    assert "0.0.0.0" in message


def test_an_empty_host_variable_still_means_the_default() -> None:
    assert load({}, {"REPRO_HOST": ""}).host == "127.0.0.1"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("https://h:99999/v1", "port from 1 to 65535"),
        ("https://h:abc/v1", "port from 1 to 65535"),
        ("http://h:0/v1", "port from 1 to 65535"),
        ("http://[::1/v1", "port from 1 to 65535"),
        ("http://h ost/v1", "without spaces"),
        ("http://h\n/v1", "without spaces"),
        ("https://h/v1#frag", "#fragment"),
        ("https://h/v1?api-version=1", "?query"),
        ("https://user:hunter2@h/v1", "user:password@"),
        ("https:///v1", "expected an http://"),
    ],
)
def test_an_upstream_that_would_not_be_called_as_written_is_refused(text: str, said: str) -> None:
    # A port out of range was a yarl traceback at start; a newline was dropped by urlsplit
    # (another host); the user info, query and fragment were dropped without a word.
    for env in (False, True):
        message = refused(BY_NAME["upstream"], text, env=env)
        assert said in message
        assert "hunter2" not in message
        assert "api-version" not in message


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("redis://h/abc", "db='abc'"),
        ("redis://h/-1", "db='-1'"),
        ("redis://h/\u0661", "db="),
        ("redis://h:0/0", "port 0"),
        ("redis://h/0?socket_timeout=nan", "socket_timeout='nan'"),
        ("redis://h/0?socket_timeout=-1", "socket_timeout='-1'"),
        ("redis://h/0?max_connections=0", "max_connections='0'"),
        ("redis://h/0?health_check_interval=\u0661", "health_check_interval="),
        ("redis://h/0?cluster=true&cluster=false", "given twice"),
        ("redis://h/0#x", "#fragment"),
        ("redis://h /0", "without spaces"),
        ("memory://host/path", "no host or path"),
        ("memory://?max_bytes=\u0663", "max_bytes"),
    ],
)
def test_a_store_url_redis_py_would_read_otherwise_is_refused(text: str, said: str) -> None:
    # redis-py took a db it could not read as 0, and casts the rest with int() and float().
    message = refused(BY_NAME["store"], text, env=True)
    assert said in message


@pytest.mark.parametrize("name", ["admin_token", "probe_key"])
@pytest.mark.parametrize("text", [" ", "\n", "s3\ncret", "s3\tcret", "s3cr\u00e9t", "s3\x00"])
def test_a_token_no_header_can_carry_is_refused_and_never_shown(name: str, text: str) -> None:
    # `stats` sends the admin token only as printable ASCII, and no client sends a newline
    # within a header: such a token locked the routes for good.
    message = refused(BY_NAME[name], text, env=True)
    assert "s3" not in message
    assert "***" in message


def test_a_wrong_encryption_key_is_never_shown() -> None:
    message = refused(BY_NAME["encryption_key"], "hunter2hunter2", env=True)
    assert "hunter2" not in message


def test_a_value_read_from_a_file_keeps_no_newline() -> None:
    # A mounted secret or config file often ends in a newline: the admin token then matched
    # no bearer (read stripped), and an upstream kept a %0A in its path.
    environ = {
        "REPRO_ADMIN_TOKEN": "s3cret\n",
        "REPRO_PROBE_KEY": " sk-probe\t",
        "REPRO_UPSTREAM": "https://api.openai.com/v1/\n",
        "REPRO_STORE": "redis://127.0.0.1:6379/0\n",
        "REPRO_HOST": "0.0.0.0\n",
    }
    settings = load({}, environ)
    assert settings.admin_token == "s3cret"
    assert settings.probe_key == "sk-probe"
    assert settings.upstream == "https://api.openai.com/v1"
    assert settings.store == "redis://127.0.0.1:6379/0"
    assert settings.host == "0.0.0.0"


def test_tokens_users_have_still_pass() -> None:
    token = "sk-proj_AbC.123~+/="
    settings = load({}, {"REPRO_ADMIN_TOKEN": token, "REPRO_PROBE_KEY": token})
    assert settings.admin_token == token
    assert settings.probe_key == token


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("mode", ["readwrite", "record", "replay"])
def test_a_cassette_that_is_no_file_is_refused_in_every_mode(
    mode: str, tmp_path: Path, fifo: str
) -> None:
    # In readwrite and record, a directory or a device was taken and the recording lost at
    # exit; in replay, a directory was "no such file".
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    for path in (str(tmp_path), "/dev/null", fifo):
        flags = {"cassette": path, "cache_scope": "shared", "cache_mode": mode}
        with pytest.raises(SettingError, match=r"^--cassette / REPRO_CASSETTE: .*regular file"):
            load(flags, {})


def test_a_cassette_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "absent" / "run.jsonl")
    with pytest.raises(SettingError, match="no directory"):
        load({"cassette": path, "cache_scope": "shared"}, {})


def test_a_new_cassette_in_an_existing_directory_still_passes(tmp_path: Path) -> None:
    path = str(tmp_path / "run.jsonl")
    assert load({"cassette": path, "cache_scope": "shared"}, {}).cassette == path


@pytest.mark.parametrize("name", ["upstream_ca", "upstream_cert"])
def test_a_tls_file_larger_than_any_pem_is_refused_before_it_is_read(
    name: str, tmp_path: Path
) -> None:
    path = tmp_path / "huge.pem"
    with path.open("wb") as handle:
        handle.truncate(64 * 1024**3)  # sparse: 64 GiB OpenSSL would read through
    message = refused(BY_NAME[name], str(path), env=True)
    assert "PEM file" in message


def test_probes_without_a_key_to_send_are_refused() -> None:
    # The prober stays idle without a key: --probe-interval alone did nothing, silently.
    with pytest.raises(SettingError, match=r"^--probe-interval / REPRO_PROBE_INTERVAL: .*key"):
        load({}, {"REPRO_PROBE_INTERVAL": "3600"})
    settings = load({}, {"REPRO_PROBE_INTERVAL": "3600", "REPRO_PROBE_KEY": "sk-probe"})
    assert settings.probe_interval == 3600


@pytest.mark.parametrize("name", ["upstream_ca", "upstream_cert"])
def test_tls_files_for_a_plain_http_upstream_are_refused(name: str) -> None:
    # The TLS context is built for an https:// upstream only: the file was ignored.
    option = BY_NAME[name]
    flags = {name: "/etc/hostname", "upstream": "http://127.0.0.1:9/v1"}
    with pytest.raises(SettingError, match=rf"^{option.flag} / {option.env}: .*https://"):
        load(flags, {})


@pytest.mark.parametrize(
    "proxy",
    ["proxy.corp:3128", "socks5://h:1080", "http://[::1", "http://h:abc", "http://u:hunter2@h:0"],
)
def test_a_forward_proxy_no_upstream_call_could_use_is_refused(proxy: str) -> None:
    # It was read at each upstream call, which all failed; the start went fine.
    with pytest.raises(SettingError, match=r"^HTTPS_PROXY / HTTP_PROXY / ALL_PROXY: ") as info:
        load({}, {"HTTPS_PROXY": proxy})
    assert "hunter2" not in str(info.value)


def test_a_forward_proxy_the_upstream_bypasses_or_with_credentials_still_passes() -> None:
    environ = {"HTTPS_PROXY": "socks5://h:1080", "NO_PROXY": "api.openai.com"}
    assert load({}, environ).upstream == "https://api.openai.com/v1"
    assert load({}, {"https_proxy": "http://u:pw@proxy.corp:3128"}).upstream.startswith("https")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("store", "redis://u:hunter2@[::1/0"),
        ("store", "rediss://u:hunt@er2@h:6380/x"),
        ("upstream", "http://u:hunter2@[::1/v1"),
    ],
)
def test_a_url_too_broken_to_parse_never_shows_its_password(name: str, text: str) -> None:
    # The password was masked through urlsplit, which raises on an unclosed [: the URL was
    # repeated whole.
    message = refused(BY_NAME[name], text, env=True)
    assert "hunter2" not in message
    assert "hunt" not in message


def test_a_command_flag_never_repeats_a_password_or_query() -> None:
    parse = values.argument(values.http_url)
    with pytest.raises(argparse.ArgumentTypeError) as info:
        parse("http://ops:hunter2@127.0.0.1:99999/v1?api-key=sk-query")
    assert "hunter2" not in str(info.value)
    assert "sk-query" not in str(info.value)
    assert parse("http://ops:pw@127.0.0.1:8080/v1?api-key=k").endswith("?api-key=k")
