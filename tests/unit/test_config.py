"""Unit tests of proxy.config.load: flags, environment, defaults, validation, secret-free repr."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from proxy.config import (
    OPTIONS,
    SettingError,
    Settings,
    add_arguments,
    load,
    secrets_on_command_line,
    unknown_variables,
)
from proxy.core.policy import CacheMode, CacheScope, Enforce, FingerprintPolicy

# The settings table of the contract: name -> (flag, env, value of the documented default).
CONTRACT: dict[str, tuple[str, str, Any]] = {
    "host": ("--host", "REPRO_HOST", "127.0.0.1"),
    "port": ("--port", "REPRO_PORT", 8080),
    "upstream": ("--upstream", "REPRO_UPSTREAM", "https://api.openai.com/v1"),
    "store": ("--store", "REPRO_STORE", "memory://"),
    "default_seed": ("--default-seed", "REPRO_DEFAULT_SEED", 12345),
    "enforce": ("--enforce", "REPRO_ENFORCE", Enforce.SEED),
    "cache_mode": ("--cache-mode", "REPRO_CACHE_MODE", CacheMode.READWRITE),
    "fingerprint_policy": (
        "--fingerprint-policy",
        "REPRO_FINGERPRINT_POLICY",
        FingerprintPolicy.FOLLOW,
    ),
    "fingerprint_grace": ("--fingerprint-grace", "REPRO_FINGERPRINT_GRACE", 0),
    "cache_scope": ("--cache-scope", "REPRO_CACHE_SCOPE", CacheScope.KEY),
    "ttl": ("--ttl", "REPRO_TTL", 0),
    "admin_token": ("--admin-token", "REPRO_ADMIN_TOKEN", None),
    "secret": ("--secret", "REPRO_SECRET", None),
    "max_body": ("--max-body", "REPRO_MAX_BODY", 16 * 1024 * 1024),
    "connect_timeout": ("--connect-timeout", "REPRO_CONNECT_TIMEOUT", 10),
    "upstream_timeout": ("--upstream-timeout", "REPRO_UPSTREAM_TIMEOUT", 600),
}
BY_NAME = {option.name: option for option in OPTIONS}


def parse_flags(*argv: str) -> dict[str, str | None]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return vars(parser.parse_args(list(argv)))


class TestDefaults:
    @pytest.mark.parametrize("name", sorted(CONTRACT))
    def test_default_equals_contract(self, name: str) -> None:
        settings = load({}, {})
        assert getattr(settings, name) == CONTRACT[name][2]

    @pytest.mark.parametrize("name", sorted(CONTRACT))
    def test_flag_and_env_names(self, name: str) -> None:
        flag, env, _ = CONTRACT[name]
        assert BY_NAME[name].flag == flag
        assert BY_NAME[name].env == env

    def test_loaded_defaults_equal_dataclass_defaults(self) -> None:
        assert load({}, {}) == Settings()

    def test_argparse_defaults_resolve_to_defaults(self) -> None:
        assert load(parse_flags(), {}) == Settings()

    def test_types(self) -> None:
        settings = load({}, {})
        assert type(settings.port) is int
        assert type(settings.default_seed) is int
        assert type(settings.ttl) is int
        assert type(settings.max_body) is int
        assert isinstance(settings.enforce, Enforce)
        assert isinstance(settings.cache_mode, CacheMode)
        assert isinstance(settings.fingerprint_policy, FingerprintPolicy)
        assert isinstance(settings.cache_scope, CacheScope)
        assert isinstance(settings.fingerprint_grace, float)
        assert isinstance(settings.connect_timeout, float)
        assert isinstance(settings.upstream_timeout, float)

    def test_every_flag_is_an_argparse_option(self) -> None:
        flags = parse_flags(*[arg for option in OPTIONS for arg in (option.flag, "x")])
        assert set(flags) == {option.name for option in OPTIONS}


class TestPrecedence:
    def test_env_used_without_flag(self) -> None:
        environ = {
            "REPRO_HOST": "0.0.0.0",
            "REPRO_PORT": "9000",
            "REPRO_UPSTREAM": "http://localhost:8000/v1",
            "REPRO_STORE": "redis://localhost:6379/0",
            "REPRO_DEFAULT_SEED": "7",
            "REPRO_ENFORCE": "strict",
            "REPRO_CACHE_MODE": "replay",
            "REPRO_FINGERPRINT_POLICY": "pin",
            "REPRO_FINGERPRINT_GRACE": "30",
            "REPRO_CACHE_SCOPE": "shared",
            "REPRO_TTL": "3600",
            "REPRO_ADMIN_TOKEN": "adm",
            "REPRO_SECRET": "sec-sixteen-bytes",
            "REPRO_MAX_BODY": "1MiB",
            "REPRO_CONNECT_TIMEOUT": "2.5",
            "REPRO_UPSTREAM_TIMEOUT": "30",
        }
        settings = load({}, environ)
        assert settings.host == "0.0.0.0"
        assert settings.port == 9000
        assert settings.upstream == "http://localhost:8000/v1"
        assert settings.store == "redis://localhost:6379/0"
        assert settings.default_seed == 7
        assert settings.enforce is Enforce.STRICT
        assert settings.cache_mode is CacheMode.REPLAY
        assert settings.fingerprint_policy is FingerprintPolicy.PIN
        assert settings.fingerprint_grace == 30
        assert settings.cache_scope is CacheScope.SHARED
        assert settings.ttl == 3600
        assert settings.admin_token == "adm"
        assert settings.secret == "sec-sixteen-bytes"
        assert settings.max_body == 1024 * 1024
        assert settings.connect_timeout == 2.5
        assert settings.upstream_timeout == 30

    def test_flag_wins_over_env(self) -> None:
        settings = load(
            {"port": "9001", "enforce": "off", "secret": "flag-secret-sixteen"},
            {"REPRO_PORT": "9000", "REPRO_ENFORCE": "strict", "REPRO_SECRET": "env-secret-sixteen"},
        )
        assert settings.port == 9001
        assert settings.enforce is Enforce.OFF
        assert settings.secret == "flag-secret-sixteen"

    def test_none_flag_falls_back_to_env(self) -> None:
        assert load({"port": None}, {"REPRO_PORT": "9000"}).port == 9000

    def test_argparse_flags(self) -> None:
        flags = parse_flags("--port", "9002", "--cache-mode", "record", "--max-body", "512K")
        settings = load(flags, {"REPRO_PORT": "9000", "REPRO_TTL": "5"})
        assert settings.port == 9002
        assert settings.cache_mode is CacheMode.RECORD
        assert settings.max_body == 512 * 1024
        assert settings.ttl == 5

    def test_unrelated_env_ignored(self) -> None:
        assert load({}, {"PORT": "1", "REPRO_PROT": "2", "HOME": "/root"}) == Settings()

    def test_empty_env_means_unset(self) -> None:
        assert load({}, {"REPRO_PORT": "", "REPRO_ADMIN_TOKEN": ""}) == Settings()

    def test_choices_case_insensitive(self) -> None:
        settings = load({"enforce": "STRICT", "cache_mode": " Off "}, {})
        assert settings.enforce is Enforce.STRICT
        assert settings.cache_mode is CacheMode.OFF

    def test_upstream_trailing_slash_dropped(self) -> None:
        assert (
            load({"upstream": "https://example.com/v1/"}, {}).upstream == "https://example.com/v1"
        )

    @pytest.mark.parametrize("store", ["memory://", "redis://h:6379/0", "rediss://:pw@h:6380"])
    def test_store_schemes(self, store: str) -> None:
        assert load({"store": store}, {}).store == store


class TestSizes:
    @pytest.mark.parametrize(
        ("text", "size"),
        [
            ("16MiB", 16_777_216),
            ("16M", 16_777_216),
            ("16mib", 16_777_216),
            ("1048576", 1_048_576),
            ("512K", 524_288),
            ("512KiB", 524_288),
            ("1G", 1_073_741_824),
            ("1GiB", 1_073_741_824),
        ],
    )
    def test_max_body(self, text: str, size: int) -> None:
        assert load({"max_body": text}, {}).max_body == size
        assert load({}, {"REPRO_MAX_BODY": text}).max_body == size


BAD_VALUES = [
    ("port", "x"),
    ("port", "70000"),
    ("port", "-1"),
    ("port", "80.5"),
    ("enforce", "maybe"),
    ("cache_mode", "sometimes"),
    ("fingerprint_policy", "latest"),
    ("cache_scope", "tenant"),
    ("store", "ftp://example.com"),
    ("store", "localhost:6379"),
    ("max_body", "lots"),
    ("max_body", "0"),
    ("max_body", "-5"),
    ("max_body", "1.5M"),
    ("ttl", "-1"),
    ("ttl", "1h"),
    ("upstream", "api.openai.com/v1"),
    ("upstream", "ftp://api.openai.com/v1"),
    ("upstream", "https://"),
    ("default_seed", "abc"),
    ("default_seed", "1.5"),
    ("fingerprint_grace", "-1"),
    ("fingerprint_grace", "nan"),
    ("fingerprint_grace", "inf"),
    ("connect_timeout", "soon"),
    ("upstream_timeout", "-3"),
]


class TestBadValues:
    @pytest.mark.parametrize(("name", "value"), BAD_VALUES, ids=[f"{n}={v}" for n, v in BAD_VALUES])
    def test_flag(self, name: str, value: str) -> None:
        with pytest.raises(SettingError) as info:
            load({name: value}, {})
        message = str(info.value)
        assert BY_NAME[name].flag in message
        assert BY_NAME[name].env in message

    @pytest.mark.parametrize(("name", "value"), BAD_VALUES, ids=[f"{n}={v}" for n, v in BAD_VALUES])
    def test_env(self, name: str, value: str) -> None:
        with pytest.raises(SettingError) as info:
            load({}, {BY_NAME[name].env: value})
        message = str(info.value)
        assert BY_NAME[name].flag in message
        assert BY_NAME[name].env in message

    def test_setting_error_is_value_error(self) -> None:
        assert issubclass(SettingError, ValueError)

    def test_good_flag_hides_bad_env(self) -> None:
        assert load({"port": "9000"}, {"REPRO_PORT": "x"}).port == 9000

    @pytest.mark.parametrize("seed", [str(2**63), str(-(2**63) - 1), str(2**64)])
    def test_default_seed_outside_int64_rejected(self, seed: str) -> None:
        # A client seed outside -2^63..2^63-1 is refused with 400 (policy.enforce); the
        # default seed the proxy injects itself must obey the same range, or every request
        # without a seed carries a value the upstream (and orjson, past 2^64) cannot take.
        with pytest.raises(SettingError) as info:
            load({"default_seed": seed}, {})
        assert "--default-seed" in str(info.value)
        assert "REPRO_DEFAULT_SEED" in str(info.value)

    @pytest.mark.parametrize("seed", [str(2**63 - 1), str(-(2**63)), "0", "-1"])
    def test_default_seed_int64_accepted(self, seed: str) -> None:
        assert load({"default_seed": seed}, {}).default_seed == int(seed)

    def test_bad_store_error_does_not_show_password(self) -> None:
        # Settings errors hide the admin token and secret; a mistyped store URL carries
        # the Redis password and must not print it either.
        with pytest.raises(SettingError) as info:
            load({"store": "reddis://user:hunter2@cache.internal:6379"}, {})
        assert "hunter2" not in str(info.value)
        assert "--store" in str(info.value)


class TestSecret:
    @pytest.mark.parametrize("ending", ["\n", "\r\n"])
    def test_the_newline_a_secret_file_ends_with_is_not_part_of_the_secret(
        self, ending: str
    ) -> None:
        # A replica given the secret from a mounted file must hash keys as one given it by hand.
        assert load({}, {"REPRO_SECRET": "hmac-secret-sixteen" + ending}).secret == (
            "hmac-secret-sixteen"
        )

    def test_spaces_inside_a_secret_are_kept(self) -> None:
        assert load({"secret": " a pass phrase, 16+ "}, {}).secret == " a pass phrase, 16+ "

    def test_sixteen_bytes_of_any_script_are_enough(self) -> None:
        assert load({"secret": "\u00e9" * 8}, {}).secret == "\u00e9" * 8
        with pytest.raises(SettingError, match="at least 16 bytes"):
            load({"secret": "e" * 15}, {})


class TestRepr:
    def test_secrets_hidden(self) -> None:
        settings = load({"admin_token": "adm-token-XYZ", "secret": "hmac-secret-ABCDE"}, {})
        for text in (repr(settings), str(settings)):
            assert "adm-token-XYZ" not in text
            assert "hmac-secret-ABCDE" not in text
        assert settings.admin_token == "adm-token-XYZ"
        assert settings.secret == "hmac-secret-ABCDE"

    def test_secrets_from_env_hidden(self) -> None:
        settings = load(
            {}, {"REPRO_ADMIN_TOKEN": "adm-token-XYZ", "REPRO_SECRET": "hmac-ABC-sixteen"}
        )
        assert "adm-token-XYZ" not in repr(settings)
        assert "hmac-ABC" not in repr(settings)

    @pytest.mark.parametrize(
        "store",
        [
            "redis://:s3cretpw@localhost:6379/0",
            "redis://default:s3cretpw@localhost:6379/0",
            "rediss://user:s3cretpw@redis.example.com:6380/1?cluster=true",
            "redis://user:s3cret%40pw@localhost:6379",
        ],
    )
    def test_store_password_hidden(self, store: str) -> None:
        settings = load({"store": store}, {})
        assert settings.store == store  # the real value is kept for connecting
        for text in (repr(settings), str(settings)):
            assert "s3cret" not in text
            assert "localhost" in text or "redis.example.com" in text

    def test_store_password_in_query_hidden(self) -> None:
        # redis-py's from_url takes the password from the query string as well.
        settings = load({"store": "redis://localhost:6379/0?password=s3cretpw"}, {})
        assert "s3cretpw" not in repr(settings)

    def test_repr_shows_ordinary_settings(self) -> None:
        text = repr(load({"port": "9005", "store": "redis://localhost:6379/0"}, {}))
        assert "9005" in text
        assert "redis://localhost:6379/0" in text


def test_every_environment_variable_is_the_flag_spelled_as_the_contract_does() -> None:
    from proxy.config import OPTIONS

    for option in OPTIONS:
        assert option.env == "REPRO_" + option.flag.removeprefix("--").replace("-", "_").upper()


def test_a_misspelt_variable_is_named_with_the_setting_it_resembles() -> None:
    environ = {
        "REPRO_UPSTRAEM": "http://127.0.0.1:1/v1",
        "REPRO_PORT": "8081",
        "REPRO_URL": "http://127.0.0.1:8080",  # the admin commands' own
        "REPRO_NOTHING_LIKE_IT": "x",
        "HOME": "/root",
    }
    assert unknown_variables(environ) == [
        ("REPRO_NOTHING_LIKE_IT", None),
        ("REPRO_UPSTRAEM", "REPRO_UPSTREAM"),
    ]


def test_replay_serves_every_recorded_fingerprint_unless_a_policy_is_set() -> None:
    assert load({"cache_mode": "replay"}, {}).fingerprint_policy is FingerprintPolicy.PIN
    env = {"REPRO_CACHE_MODE": "replay"}
    assert load({}, env).fingerprint_policy is FingerprintPolicy.PIN
    chosen = {**env, "REPRO_FINGERPRINT_POLICY": "follow"}
    assert load({}, chosen).fingerprint_policy is FingerprintPolicy.FOLLOW
    flagged = {"cache_mode": "replay", "fingerprint_policy": "follow"}
    assert load(flagged, {}).fingerprint_policy is FingerprintPolicy.FOLLOW
    assert load({}, {}).fingerprint_policy is FingerprintPolicy.FOLLOW


def test_port_0_is_a_free_port_but_not_for_several_workers() -> None:
    assert load({"port": "0"}, {}).port == 0
    with pytest.raises(SettingError, match=r"--port / REPRO_PORT.*--workers 1"):
        load({"port": "0", "workers": "2", "store": "redis://127.0.0.1:6390/0"}, {})


def test_secrets_given_as_flags_are_named_for_a_warning() -> None:
    """A process's arguments are readable by every local user; its environment is not."""
    flags: dict[str, str | list[str] | None] = {
        "admin_token": "t",
        "secret": None,
        "encryption_key": "k",
        "store": "redis://:pw@127.0.0.1:6379/0",
        "upstream": "http://127.0.0.1:9/v1",
    }
    named = [o.env for o in secrets_on_command_line(flags)]
    assert named == ["REPRO_STORE", "REPRO_ADMIN_TOKEN", "REPRO_ENCRYPTION_KEY"]
    assert secrets_on_command_line({"store": "redis://127.0.0.1:6379/0"}) == []
