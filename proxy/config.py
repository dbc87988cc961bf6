"""Settings: every `serve` flag and its environment variable, resolved into one frozen object.

The flag wins over the environment, the environment over the default. Values are cast and
checked here, once, with errors that name the setting; secrets never appear in the repr. The
settings themselves (flag, variable, default, parser, help) are listed in `proxy.options`.
"""

from __future__ import annotations

import argparse
import difflib
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from proxy import values
from proxy.core.policy import CacheMode, CacheScope, Enforce, FingerprintPolicy, StreamDisconnect
from proxy.options import OPTIONS, Option
from proxy.upstream.egress import Egress, EncryptedKey, env_proxy, tls_context

__all__ = ["OPTIONS", "Option", "SettingError", "Settings", "add_arguments", "load"]


class SettingError(ValueError):
    """A setting has a value we cannot use; the message names the flag and variable."""


_SECRETS = frozenset({"admin_token", "secret", "encryption_key", "probe_key"})


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    allowed_host: tuple[str, ...] = ()
    upstream: str = "https://api.openai.com/v1"
    store: str = "memory://"
    default_seed: int = 12345
    enforce: Enforce = Enforce.SEED
    cache_mode: CacheMode = CacheMode.READWRITE
    fingerprint_policy: FingerprintPolicy = FingerprintPolicy.FOLLOW
    fingerprint_grace: float = 0.0
    fingerprint_flap_window: float = 600.0
    cache_scope: CacheScope = CacheScope.KEY
    ttl: int = 0
    stale_if_error: int = 0
    admin_token: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    encryption_key: str | None = field(default=None, repr=False)
    max_body: int = 16 * 1024 * 1024
    max_entry: int = 32 * 1024 * 1024
    compression: int = 1
    compression_dictionary: int = 1000
    key_check_interval: float = 300.0
    key_check_timeout: float = 5.0
    credential_header: tuple[str, ...] = ()
    unkeyed_header: tuple[str, ...] = ()
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
    send_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    shutdown_timeout: float = 25.0
    max_connections: int | None = None
    stream_disconnect: StreamDisconnect = StreamDisconnect.FINISH
    cassette: str | None = None
    workers: int = 1
    access_log: bool = False
    log_level: str = "info"

    def public(self) -> dict[str, Any]:
        """Every setting as a JSON value, secrets masked: what the start-up log line shows."""
        shown: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRETS and value is not None:
                value = "***"
            elif f.name == "store":
                value = mask_password(value)
            elif isinstance(value, Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            shown[f.name] = value
        return shown

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.public().items())
        return f"Settings({shown})"


def store_failure(exc: BaseException, url: str) -> str:
    """A store's failure in one line: what failed and redis-py's own words for why (the host,
    'Connection refused'), without the password of `url`, which redis-py may repeat."""
    cause = str(exc) or type(exc).__name__
    if exc.__cause__ is not None and str(exc.__cause__):
        cause = f"{cause}: {exc.__cause__}"
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return cause.replace(password, "***") if password else cause


def mask_password(url: str) -> str:
    """The URL with any password, in its userinfo or its query, replaced by ***."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        url = url.replace(f":{password}@", ":***@", 1)
    base, mark, query = url.partition("?")
    return base + mark + "&".join(_masked(field) for field in query.split("&")) if mark else url


def _masked(field: str) -> str:
    """A query field with its value masked when its name, decoded as redis-py decodes it
    (`pass%77ord` is `password`), names a password."""
    name, equals, _ = field.partition("=")
    return f"{name}=***" if equals and "password" in unquote_plus(name).lower() else field


def _shown(option: Option, text: str) -> str:
    """A wrong value as its error repeats it: never a secret, a password or a URL's query (where
    keys travel), and not thousands of characters."""
    if option.name in _SECRETS:
        return "***"
    return values.shown(mask_password(text), query=option.name == "upstream")


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
    given = [o for o in OPTIONS if o.name in ("upstream_ca", "upstream_cert")]
    for option in given:
        if getattr(settings, option.name) and not settings.upstream.lower().startswith("https:"):
            raise SettingError(
                f"{option.flag} / {option.env}: applies to an https:// --upstream only; this "
                "one is plain http://, where it would be ignored"
            )
    if settings.upstream_ca:  # a context loads the system's CAs: tens of ms at every start
        try:
            tls_context(Egress(ca=settings.upstream_ca))
        except (OSError, ssl.SSLError) as exc:
            raise SettingError(
                f"--upstream-ca / REPRO_UPSTREAM_CA: not a PEM CA bundle: {exc}"
            ) from None
    if not settings.upstream_cert:
        return
    try:
        tls_context(Egress(cert=settings.upstream_cert, key=settings.upstream_key))
    except EncryptedKey as exc:
        where = "KEY" if settings.upstream_key else "CERT"
        raise SettingError(f"--upstream-{where.lower()} / REPRO_UPSTREAM_{where}: {exc}") from None
    except (OSError, ssl.SSLError) as exc:
        raise SettingError(
            f"--upstream-cert / REPRO_UPSTREAM_CERT: certificate and key unusable: {exc}"
        ) from None


def _check_forward_proxy(upstream: str, environ: Mapping[str, str]) -> None:
    """The forward proxy the upstream is reached through, from HTTPS_PROXY and its kin, is read
    once here: one aiohttp cannot use would fail every upstream call, not the start."""
    proxy = env_proxy(upstream, environ)
    if proxy is None:
        return
    try:
        parts = urlsplit(proxy)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # an unclosed [, a port out of range or not a number
        usable = False
    if not usable or not values.plain(proxy):
        shown = values.shown(proxy)
        raise SettingError(
            f"HTTPS_PROXY / HTTP_PROXY / ALL_PROXY: the forward proxy for the upstream, {shown!r}, "
            "is not usable: expected http://host:port (user:password@ allowed)"
        )


_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
_EVERY_INTERFACE = {"0.0.0.0", "::"}
_REACHES = {
    "127.0.0.1": {"127.0.0.1", "localhost"},
    "::1": {"::1", "localhost"},
    "localhost": _LOOPBACK,
}
"""The upstream hosts that reach a proxy listening on a loopback address: not another 127.x,
which is another socket unless the proxy listens on every interface."""


def _check_not_itself(settings: Settings, environ: Mapping[str, str]) -> None:
    """An --upstream that is the proxy's own address (the SDK's base URL copied into it): each
    request would call the proxy again, a coalesced one waiting --lock-timeout on itself, the
    others opening connections until --max-connections. Reached directly only: a forward
    proxy's loopback is another machine's."""
    parts = urlsplit(settings.upstream)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = (parts.hostname or "").lower()
    if port != settings.port or env_proxy(settings.upstream, environ) is not None:
        return
    listen = settings.host.lower().strip("[]")
    loopback = host in _LOOPBACK or host.startswith("127.")
    if (
        host == listen
        or host in _REACHES.get(listen, ())
        or (loopback and listen in _EVERY_INTERFACE)
    ):
        raise SettingError(
            f"--upstream / REPRO_UPSTREAM: {values.shown(settings.upstream)!r} is this proxy's "
            f"own address (--port {settings.port}): it would call itself; give the upstream's "
            "base URL, such as https://api.openai.com/v1 or the sim's http://127.0.0.1:8090/v1"
        )


_ENUMS: dict[str, Callable[[str], Any]] = {
    "enforce": Enforce,
    "cache_mode": CacheMode,
    "fingerprint_policy": FingerprintPolicy,
    "cache_scope": CacheScope,
    "stream_disconnect": StreamDisconnect,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for option in OPTIONS:
        default = option.default or "unset"
        parser.add_argument(
            option.flag,
            dest=option.name,
            default=None,
            action="append" if option.repeatable else "store",
            nargs="?" if option.switch else None,
            const="on" if option.switch else None,
            help=f"{option.help} (env {option.env}, default {default})",
        )


OTHER_VARIABLES = frozenset({"REPRO_URL"})
"""Read by the admin commands (`stats`, `purge`…), not by `serve`."""


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """The REPRO_* variables that name no setting, each with the closest name that does: a typo
    such as REPRO_UPSTRAEM would otherwise leave the default in force without a word."""
    known = {option.env for option in OPTIONS} | OTHER_VARIABLES
    return [
        (name, next(iter(difflib.get_close_matches(name, known, n=1, cutoff=0.8)), None))
        for name in sorted(environ)
        if name.startswith("REPRO_") and name not in known
    ]


def secrets_on_command_line(flags: Mapping[str, str | list[str] | None]) -> list[Option]:
    """The secret settings given as flags: any local user reads a process's arguments (`ps`,
    /proc/PID/cmdline), not its environment."""
    found = []
    for option in OPTIONS:
        given = flags.get(option.name)
        text = ",".join(given) if isinstance(given, list) else given
        if text is not None and (
            option.name in _SECRETS or (option.name == "store" and mask_password(text) != text)
        ):
            found.append(option)
    return found


def nothing_to_replay(settings: Settings) -> bool:
    """Replay mode over a memory store that starts empty, with no cassette to fill it and no
    admin token to import one: every request would be a 504 cache_miss."""
    return (
        settings.cache_mode is CacheMode.REPLAY
        and settings.store.lower().startswith("memory:")
        and settings.cassette is None
        and not settings.admin_token
    )


def exposed_keys(settings: Settings) -> list[tuple[str, str]]:
    """The private key files every local user may read, each with the setting naming it: a
    client certificate's key (--upstream-key, or the --upstream-cert file holding it) and a
    rediss:// store's ssl_keyfile. Group access is left alone (Debian's ssl-cert group)."""
    query = dict(parse_qsl(urlsplit(settings.store).query)) if settings.store else {}
    candidates = [
        ("--upstream-key / REPRO_UPSTREAM_KEY", settings.upstream_key),
        ("--upstream-cert / REPRO_UPSTREAM_CERT", settings.upstream_cert),
        ("--store / REPRO_STORE (ssl_keyfile)", query.get("ssl_keyfile")),
        ("--store / REPRO_STORE (ssl_certfile)", query.get("ssl_certfile")),
    ]
    return [(name, path) for name, path in candidates if path and _world_readable_key(path)]


def _world_readable_key(path: str) -> bool:
    try:
        if not os.stat(path).st_mode & 0o004:
            return False
        with open(path, "rb") as file:
            return b"PRIVATE KEY-----" in file.read(1 << 20)
    except OSError:
        return False


def load(
    flags: Mapping[str, str | list[str] | None], environ: Mapping[str, str] = os.environ
) -> Settings:
    """Resolve every option: flag, then environment, then default."""
    values: dict[str, Any] = {}
    explicit: set[str] = set()  # set by a flag or a variable, not left at the default
    for option in OPTIONS:
        given = flags.get(option.name)
        text = ",".join(given) if isinstance(given, list) else given
        if text is None:
            text = environ.get(option.env) or None
        if text is None:
            text = option.default
        else:
            explicit.add(option.name)
        if text is None:
            continue
        try:
            value = option.parse(text)
        except ValueError as exc:
            raise SettingError(
                f"{option.flag} / {option.env}: invalid value {_shown(option, text)!r}: {exc}"
            ) from None
        enum = _ENUMS.get(option.name)
        values[option.name] = enum(value) if enum else value
    if values.get("cache_mode") is CacheMode.REPLAY and "fingerprint_policy" not in explicit:
        # A replay serves what was recorded, whichever fingerprint it was recorded under.
        values["fingerprint_policy"] = FingerprintPolicy.PIN
    settings = Settings(**values)
    _check_together(settings, environ)
    return settings


def _check_together(settings: Settings, environ: Mapping[str, str]) -> None:
    """Values each valid alone that together would do nothing, or the wrong thing, without a
    word: refused at start, naming the setting to change."""
    _check_cassette(settings)
    _check_tls(settings)
    _check_forward_proxy(settings.upstream, environ)
    _check_not_itself(settings, environ)
    if settings.probe_interval > 0 and not settings.probe_key:
        raise SettingError(
            "--probe-interval / REPRO_PROBE_INTERVAL: probes need --probe-key / REPRO_PROBE_KEY, "
            "the API key they send; without one none would be sent"
        )
    if settings.workers > 1 and settings.port == 0:
        raise SettingError(
            "--port / REPRO_PORT: 0 (a free port) needs --workers 1: each worker would bind a "
            "port of its own"
        )
    if settings.workers > 1 and settings.store.startswith("memory:"):
        raise SettingError(
            "--workers / REPRO_WORKERS: several workers need a shared store "
            "(--store redis://…); with memory:// each would keep its own cache"
        )
