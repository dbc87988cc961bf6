"""Settings: every `serve` flag and its environment variable, resolved into one frozen object.

The flag wins over the environment, the environment over the default. Values are cast and
checked here, once, with errors that name the setting; secrets never appear in the repr.
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from proxy.core.credentials import parse_names
from proxy.core.policy import CacheMode, CacheScope, Enforce, FingerprintPolicy, StreamDisconnect
from proxy.store import parse_size
from proxy.store.encrypted import parse_keys
from proxy.upstream.egress import Egress, tls_context


class SettingError(ValueError):
    """A setting has a value we cannot use; the message names the flag and variable."""


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value

    return parse


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("expected a number of seconds >= 0")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise ValueError("expected a number of seconds > 0")
    return value


def _connections(text: str) -> int | None:
    """`auto` (None): derived from the descriptor limit when serving starts."""
    return None if text.strip().lower() == "auto" else _positive_int(text)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError("expected a fraction between 0 and 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("expected an integer >= 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("expected an integer >= 1")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("expected a port between 0 and 65535")
    return value


def _size(text: str) -> int:
    return parse_size(text)


def _positive_size(text: str) -> int:
    value = parse_size(text)
    if value <= 0:
        raise ValueError("expected a size > 0")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError("expected an integer between -2^63 and 2^63-1")
    return value


def _encryption_keys(text: str) -> str:
    parse_keys(text)
    return text


def _upstream(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "expected an http:// or https:// base URL such as https://api.openai.com/v1"
        )
    return text.rstrip("/")


def _readable_file(text: str) -> str:
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise ValueError("expected a readable file")
    return text


def _store_url(text: str) -> str:
    if urlsplit(text).scheme not in ("memory", "redis", "rediss"):
        raise ValueError("expected memory://, redis://… or rediss://…")
    return text


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its flag and environment variable are spelled out as the contract names them."""

    name: str
    env: str
    default: str | None
    parse: Callable[[str], Any]
    help: str
    repeatable: bool = False  # the flag may be given several times; values join with commas

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS = (
    Option("host", "REPRO_HOST", "127.0.0.1", str, "listen address"),
    Option("port", "REPRO_PORT", "8080", _port, "listen port"),
    Option(
        "upstream",
        "REPRO_UPSTREAM",
        "https://api.openai.com/v1",
        _upstream,
        "upstream base URL, with its /v1",
    ),
    Option(
        "store",
        "REPRO_STORE",
        "memory://",
        _store_url,
        "memory://[?max_bytes=256MiB], redis://…, rediss://…",
    ),
    Option(
        "default_seed",
        "REPRO_DEFAULT_SEED",
        "12345",
        _seed,
        "seed injected into requests that carry none",
    ),
    Option("enforce", "REPRO_ENFORCE", "seed", _choice(*Enforce), "off | seed | strict"),
    Option(
        "cache_mode",
        "REPRO_CACHE_MODE",
        "readwrite",
        _choice(*CacheMode),
        "readwrite | replay | record | off",
    ),
    Option(
        "fingerprint_policy",
        "REPRO_FINGERPRINT_POLICY",
        "follow",
        _choice(*FingerprintPolicy),
        "follow | pin",
    ),
    Option(
        "fingerprint_grace",
        "REPRO_FINGERPRINT_GRACE",
        "0",
        _seconds,
        "seconds an older fingerprint stays current",
    ),
    Option("cache_scope", "REPRO_CACHE_SCOPE", "key", _choice(*CacheScope), "key | shared"),
    Option("ttl", "REPRO_TTL", "0", _non_negative_int, "seconds an entry lives; 0 = no expiry"),
    Option(
        "stale_if_error",
        "REPRO_STALE_IF_ERROR",
        "0",
        _non_negative_int,
        "seconds of age within which a stored answer of any fingerprint stands in for a "
        "failed upstream (RFC 5861); 0 = off",
    ),
    Option("admin_token", "REPRO_ADMIN_TOKEN", None, str, "bearer token for /admin/*; unset = 404"),
    Option("secret", "REPRO_SECRET", None, str, "secret of the API-key HMAC"),
    Option(
        "encryption_key",
        "REPRO_ENCRYPTION_KEY",
        None,
        _encryption_keys,
        "base64 AES-256 key(s), comma-separated, to encrypt stored answers; the first encrypts",
    ),
    Option("max_body", "REPRO_MAX_BODY", "16MiB", _positive_size, "largest request body accepted"),
    Option(
        "max_entry",
        "REPRO_MAX_ENTRY",
        "32MiB",
        _positive_size,
        "largest answer stored and whole answer read (502 beyond); larger streams pass uncached",
    ),
    Option(
        "key_check_interval",
        "REPRO_KEY_CHECK_INTERVAL",
        "300",
        _seconds,
        "seconds an API key stays trusted for cached answers after the upstream accepted it; "
        "0 = never check",
    ),
    Option(
        "key_check_timeout",
        "REPRO_KEY_CHECK_TIMEOUT",
        "5",
        _seconds,
        "seconds the key check may wait for the upstream before a HIT goes on without it",
    ),
    Option(
        "credential_header",
        "REPRO_CREDENTIAL_HEADER",
        "",
        parse_names,
        "extra header names that carry a tenant's credential (besides Authorization, api-key "
        "and x-api-key); repeatable or comma-separated",
        repeatable=True,
    ),
    Option(
        "verify_rate",
        "REPRO_VERIFY_RATE",
        "0",
        _fraction,
        "fraction of HITs re-asked upstream in the background to measure drift; 0 = none",
    ),
    Option(
        "probe_interval",
        "REPRO_PROBE_INTERVAL",
        "0",
        _seconds,
        "seconds between fingerprint probes; 0 = no probe",
    ),
    Option("probe_key", "REPRO_PROBE_KEY", None, str, "API key the fingerprint probe uses"),
    Option(
        "lock_timeout",
        "REPRO_LOCK_TIMEOUT",
        "30",
        _seconds,
        "seconds identical concurrent misses wait for the first one's answer; 0 = no waiting",
    ),
    Option(
        "near_cache",
        "REPRO_NEAR_CACHE",
        "64MiB",
        _size,
        "bytes of stored answers kept in this process in front of Redis, coherent through "
        "pub/sub; 0 = off",
    ),
    Option(
        "store_timeout",
        "REPRO_STORE_TIMEOUT",
        "0.5",
        _seconds,
        "deadline of one store call; then the proxy fails open",
    ),
    Option(
        "connect_timeout",
        "REPRO_CONNECT_TIMEOUT",
        "10",
        _seconds,
        "seconds to connect to the upstream",
    ),
    Option(
        "upstream_timeout",
        "REPRO_UPSTREAM_TIMEOUT",
        "600",
        _seconds,
        "seconds to wait for the upstream (per chunk)",
    ),
    Option(
        "upstream_ca",
        "REPRO_UPSTREAM_CA",
        None,
        _readable_file,
        "PEM bundle of CAs trusted for the upstream in addition to the system store",
    ),
    Option(
        "upstream_cert",
        "REPRO_UPSTREAM_CERT",
        None,
        _readable_file,
        "PEM client certificate for upstreams that ask for one (key inside, or --upstream-key)",
    ),
    Option(
        "upstream_key",
        "REPRO_UPSTREAM_KEY",
        None,
        _readable_file,
        "PEM private key of --upstream-cert",
    ),
    Option(
        "upstream_connections",
        "REPRO_UPSTREAM_CONNECTIONS",
        "0",
        _non_negative_int,
        "open upstream connections at most; more requests wait for one; 0 = no cap",
    ),
    Option(
        "header_timeout",
        "REPRO_HEADER_TIMEOUT",
        "10",
        _positive_seconds,
        "seconds a client has to send a request's head, from its first byte (from the "
        "connection's opening for the first request)",
    ),
    Option(
        "body_timeout",
        "REPRO_BODY_TIMEOUT",
        "60",
        _positive_seconds,
        "seconds a request body may go silent between two reads",
    ),
    Option(
        "keepalive_timeout",
        "REPRO_KEEPALIVE_TIMEOUT",
        "75",
        _positive_seconds,
        "seconds an idle keep-alive client connection stays open",
    ),
    Option(
        "max_connections",
        "REPRO_MAX_CONNECTIONS",
        "auto",
        _connections,
        "open client connections per serving process; beyond it a 503; auto = from the "
        "descriptor limit",
    ),
    Option(
        "stream_disconnect",
        "REPRO_STREAM_DISCONNECT",
        "finish",
        _choice(*StreamDisconnect),
        "finish (read on and store a stream whose client left) | cancel",
    ),
    Option(
        "cassette",
        "REPRO_CASSETTE",
        None,
        str,
        "JSONL cassette loaded into the store at start (and, unless replaying, written back at "
        "exit); needs --cache-scope shared",
    ),
    Option(
        "workers",
        "REPRO_WORKERS",
        "1",
        _positive_int,
        "serving processes on the port (SO_REUSEPORT)",
    ),
    Option(
        "log_level",
        "REPRO_LOG_LEVEL",
        "info",
        _choice("debug", "info", "warning", "error"),
        "log level",
    ),
)
_SECRETS = frozenset({"admin_token", "secret", "encryption_key", "probe_key"})


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    upstream: str = "https://api.openai.com/v1"
    store: str = "memory://"
    default_seed: int = 12345
    enforce: Enforce = Enforce.SEED
    cache_mode: CacheMode = CacheMode.READWRITE
    fingerprint_policy: FingerprintPolicy = FingerprintPolicy.FOLLOW
    fingerprint_grace: float = 0.0
    cache_scope: CacheScope = CacheScope.KEY
    ttl: int = 0
    stale_if_error: int = 0
    admin_token: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    encryption_key: str | None = field(default=None, repr=False)
    max_body: int = 16 * 1024 * 1024
    max_entry: int = 32 * 1024 * 1024
    key_check_interval: float = 300.0
    key_check_timeout: float = 5.0
    credential_header: tuple[str, ...] = ()
    verify_rate: float = 0.0
    probe_interval: float = 0.0
    probe_key: str | None = field(default=None, repr=False)
    lock_timeout: float = 30.0
    near_cache: int = 64 * 1024 * 1024
    store_timeout: float = 0.5
    connect_timeout: float = 10.0
    upstream_timeout: float = 600.0
    upstream_ca: str | None = None
    upstream_cert: str | None = None
    upstream_key: str | None = None
    upstream_connections: int = 0
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_connections: int | None = None
    stream_disconnect: StreamDisconnect = StreamDisconnect.FINISH
    cassette: str | None = None
    workers: int = 1
    log_level: str = "info"

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRETS and value is not None:
                value = "***"
            elif f.name == "store":
                value = _mask_password(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"


_QUERY_PASSWORD = re.compile(r"(?i)(password=)[^&]*")


def _mask_password(url: str) -> str:
    """The URL with any password, in its userinfo or its query, replaced by ***."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        url = url.replace(f":{password}@", ":***@", 1)
    return _QUERY_PASSWORD.sub(r"\1***", url)


def _check_cassette(settings: Settings) -> None:
    if settings.cassette is None:
        return
    if settings.cache_scope is not CacheScope.SHARED:
        raise SettingError(
            "--cassette / REPRO_CASSETTE: a cassette is replayed for whatever API key the tests "
            "send, so it needs --cache-scope shared"
        )
    if settings.cache_mode is CacheMode.REPLAY and not os.path.isfile(settings.cassette):
        raise SettingError(f"--cassette / REPRO_CASSETTE: no such file {settings.cassette!r}")


def _check_tls(settings: Settings) -> None:
    """Load the TLS files once here, so that a wrong one is named at start, not per request."""
    if settings.upstream_key and not settings.upstream_cert:
        raise SettingError("--upstream-key / REPRO_UPSTREAM_KEY: needs --upstream-cert")
    try:
        tls_context(Egress(ca=settings.upstream_ca))
    except (OSError, ssl.SSLError) as exc:
        raise SettingError(
            f"--upstream-ca / REPRO_UPSTREAM_CA: not a PEM CA bundle: {exc}"
        ) from None
    try:
        tls_context(Egress(cert=settings.upstream_cert, key=settings.upstream_key))
    except (OSError, ssl.SSLError) as exc:
        raise SettingError(
            f"--upstream-cert / REPRO_UPSTREAM_CERT: certificate and key unusable: {exc}"
        ) from None


_ENUMS: dict[str, Callable[[str], Any]] = {
    "enforce": Enforce,
    "cache_mode": CacheMode,
    "fingerprint_policy": FingerprintPolicy,
    "cache_scope": CacheScope,
    "stream_disconnect": StreamDisconnect,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for option in OPTIONS:
        default = "unset" if option.default is None else option.default
        parser.add_argument(
            option.flag,
            dest=option.name,
            default=None,
            action="append" if option.repeatable else "store",
            help=f"{option.help} (env {option.env}, default {default})",
        )


def load(
    flags: Mapping[str, str | list[str] | None], environ: Mapping[str, str] = os.environ
) -> Settings:
    """Resolve every option: flag, then environment, then default."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        given = flags.get(option.name)
        text = ",".join(given) if isinstance(given, list) else given
        if text is None:
            text = environ.get(option.env) or option.default
        if text is None:
            continue
        try:
            value = option.parse(text)
        except ValueError as exc:
            shown = "***" if option.name in _SECRETS else _mask_password(text)
            raise SettingError(
                f"{option.flag} / {option.env}: invalid value {shown!r}: {exc}"
            ) from None
        enum = _ENUMS.get(option.name)
        values[option.name] = enum(value) if enum else value
    settings = Settings(**values)
    _check_cassette(settings)
    _check_tls(settings)
    if settings.workers > 1 and settings.store.startswith("memory:"):
        raise SettingError(
            "--workers / REPRO_WORKERS: several workers need a shared store "
            "(--store redis://…); with memory:// each would keep its own cache"
        )
    return settings
