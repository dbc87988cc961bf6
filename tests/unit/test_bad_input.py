"""Every wrong value of a setting is refused at start with one line that names the setting, the
value and what is accepted; the store URL's options are checked before anything connects."""

from __future__ import annotations

import pytest

from proxy.config import SettingError, load
from proxy.options import OPTIONS

# One wrong value per setting that parses its text; free-text settings (host, tokens, paths
# read later) are absent on purpose, and the test below keeps the table complete.
WRONG = {
    "port": "eighty",
    "allowed_host": "proxy:8080",
    "upstream": "localhost:8000",
    "store": "memory://?max_bytes=lots",
    "default_seed": "random",
    "enforce": "always",
    "cache_mode": "read",
    "fingerprint_policy": "latest",
    "fingerprint_grace": "soon",
    "fingerprint_flap_window": "-5",
    "cache_scope": "tenant",
    "ttl": "abc",
    "stale_if_error": "1h",
    "encryption_key": "not base64!",
    "max_body": "lots",
    "max_entry": "huge",
    "compression": "fast",
    "compression_dictionary": "-5",
    "key_check_interval": "often",
    "key_check_timeout": "-1",
    "credential_header": "bad header",
    "unkeyed_header": "x-trace-*-id",
    "verify_rate": "half",
    "probe_interval": "nan",
    "lock_timeout": "inf",
    "near_cache": "big",
    "store_timeout": "fast",
    "connect_timeout": "x",
    "upstream_timeout": "1e400",
    "upstream_ca": "/nonexistent/ca.pem",
    "upstream_cert": "/nonexistent/cert.pem",
    "upstream_key": "/nonexistent/key.pem",
    "upstream_connections": "many",
    "header_timeout": "0",
    "body_timeout": "",
    "send_timeout": "-1",
    "keepalive_timeout": "forever",
    "shutdown_timeout": "-5",
    "max_connections": "lots",
    "stream_disconnect": "abort",
    "workers": "0",
    "access_log": "sometimes",
    "log_level": "loud",
}
FREE_TEXT = {"host", "admin_token", "secret", "probe_key", "cassette"}
HIDDEN = {"encryption_key"}  # a secret: named, never shown


def test_every_setting_that_parses_its_value_has_a_wrong_value_here() -> None:
    assert {option.name for option in OPTIONS} - FREE_TEXT == WRONG.keys()


@pytest.mark.parametrize(("name", "value"), sorted(WRONG.items()))
def test_a_wrong_value_names_the_setting_the_value_and_what_is_accepted(
    name: str, value: str
) -> None:
    option = next(option for option in OPTIONS if option.name == name)
    with pytest.raises(SettingError) as info:
        load({name: value}, {})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{option.flag} / {option.env}: ")
    if name not in HIDDEN:
        assert repr(value) in message
    assert "invalid literal" not in message
    assert "could not convert" not in message
    assert any(word in message for word in ("expected", "known", "must", "needs"))


STORE_URLS = [
    ("memory://?max_bytes=lots", "expected a number of bytes"),
    ("memory://?max_bytes=0", "expected a size > 0"),
    ("memory://?maxbytes=1M", "did you mean 'max_bytes'"),
    ("redis://127.0.0.1:6379/0?clustr=true", "did you mean 'cluster'"),
    ("redis://127.0.0.1:6379/0?cluster=maybe", "expected true or false"),
    ("redis://127.0.0.1:6379/0?db=x", "db='x': expected a database number"),
    ("redis://127.0.0.1:6379/0?decode_responses=true", "known: "),
    ("redis://127.0.0.1:6379/0?ssl_cert_reqs=none", "needs a rediss:// URL"),
    ("redis://127.0.0.1:port/0", "Port could not be cast"),
    ("mysql://127.0.0.1/0", "expected memory://"),
]


@pytest.mark.parametrize(("url", "expected"), STORE_URLS)
def test_a_store_url_redis_py_would_choke_on_is_refused_before_connecting(
    url: str, expected: str
) -> None:
    with pytest.raises(SettingError) as info:
        load({"store": url}, {})
    assert expected in str(info.value)
    assert str(info.value).startswith("--store / REPRO_STORE: ")


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?cluster=true&socket_timeout=2&client_name=repro",
        "rediss://:pw@cache.internal:6380/0?ssl_cert_reqs=none&ssl_ca_certs=/etc/ssl/certs/ca-certificates.crt",
        "memory://?max_bytes=512MiB",
    ],
)
def test_the_store_options_users_rely_on_still_pass(url: str) -> None:
    assert load({"store": url}, {}).store == url


def test_a_wrong_store_url_never_shows_its_password() -> None:
    with pytest.raises(SettingError) as info:
        load({"store": "redis://user:hunter2@cache:6379/0?clustr=1"}, {})
    assert "hunter2" not in str(info.value)
