"""The settings `serve` takes: each one's flag, environment variable, default, parser and help.

The help texts are what users read: `repro-proxy serve --help` shows them, and the settings table
of the README is rendered from them (`python3 -m tests.settings_table`), so they stay short and
true. The parsers are in `proxy.values`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy import values
from proxy.core.credentials import parse_names
from proxy.core.hosts import parse_allowed
from proxy.core.keyed import parse_unkeyed
from proxy.core.policy import CacheMode, CacheScope, Enforce, FingerprintPolicy, StreamDisconnect


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its flag and environment variable are spelled out as the contract names them."""

    name: str
    env: str
    default: str | None
    parse: Callable[[str], Any]
    help: str
    repeatable: bool = False  # the flag may be given several times; values join with commas
    switch: bool = False  # on or off; the bare flag means on

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS = (
    Option("host", "REPRO_HOST", "127.0.0.1", values.host, "listen address"),
    Option(
        "port",
        "REPRO_PORT",
        "8080",
        values.port,
        "listen port; 0 = a free port, reported at start (listening on http://HOST:PORT)",
    ),
    Option(
        "allowed_host",
        "REPRO_ALLOWED_HOST",
        "",
        parse_allowed,
        "names a request may give in Host (against DNS rebinding): with a loopback --host, "
        "localhost and these; with another, any unless some are given (then these and "
        "localhost); .example.com: it and every name under it; *: any; addresses always pass; "
        "repeat the flag or separate with commas",
        repeatable=True,
    ),
    Option(
        "upstream",
        "REPRO_UPSTREAM",
        "https://api.openai.com/v1",
        values.upstream,
        "base URL of the OpenAI-compatible upstream, with its /v1 (Azure: the resource root)",
    ),
    Option(
        "store",
        "REPRO_STORE",
        "memory://",
        values.store_url,
        "memory:// (a bounded LRU in this process; memory://?max_bytes=512MiB, default 256MiB) or "
        "redis://… / rediss://… (Redis or Redis Cluster, detected; ?cluster=true forces cluster "
        "mode)",
    ),
    Option(
        "default_seed",
        "REPRO_DEFAULT_SEED",
        "12345",
        values.seed,
        "seed injected into requests that carry none",
    ),
    Option(
        "enforce",
        "REPRO_ENFORCE",
        "seed",
        values.choice(*Enforce),
        "off: forward as is; seed: inject the default seed when absent; strict: also temperature "
        "0 and top_p 1",
    ),
    Option(
        "cache_mode",
        "REPRO_CACHE_MODE",
        "readwrite",
        values.choice(*CacheMode),
        "readwrite; replay: never call the upstream (implies --fingerprint-policy pin unless "
        "set), a miss is a 504 cache_miss; record: always call the upstream and store; off",
    ),
    Option(
        "fingerprint_policy",
        "REPRO_FINGERPRINT_POLICY",
        "follow",
        values.choice(*FingerprintPolicy),
        "follow: serve an answer only under the model's current fingerprint; pin: serve any "
        "stored answer",
    ),
    Option(
        "fingerprint_grace",
        "REPRO_FINGERPRINT_GRACE",
        "0",
        values.seconds,
        "with follow, seconds an older fingerprint still counts as current after the upstream "
        "last answered with it (rollouts)",
    ),
    Option(
        "fingerprint_flap_window",
        "REPRO_FINGERPRINT_FLAP_WINDOW",
        "600",
        values.seconds,
        "with follow, a model whose fingerprint moved back 3 times within this many seconds is "
        "alternating: every fingerprint it answered with in the window counts as current; 0: off",
    ),
    Option(
        "cache_scope",
        "REPRO_CACHE_SCOPE",
        "key",
        values.choice(*CacheScope),
        "key: one cache partition per API key (keyed HMAC); shared: one cache for all keys",
    ),
    Option("ttl", "REPRO_TTL", "0", values.whole_seconds, "seconds an entry lives; 0 = no expiry"),
    Option(
        "stale_if_error",
        "REPRO_STALE_IF_ERROR",
        "0",
        values.whole_seconds,
        "seconds of age within which a stored answer of any fingerprint stands in for a failed "
        "upstream (RFC 5861); 0 = off",
    ),
    Option(
        "admin_token",
        "REPRO_ADMIN_TOKEN",
        None,
        values.header_token,
        "bearer token of the /admin routes; unset, they answer 404",
    ),
    Option(
        "secret",
        "REPRO_SECRET",
        None,
        values.secret,
        "secret of the API-key HMAC, at least 16 bytes, the same for every proxy sharing a "
        "store; unset, a random one kept in the store (per process with memory://)",
    ),
    Option(
        "encryption_key",
        "REPRO_ENCRYPTION_KEY",
        None,
        values.encryption_keys,
        "base64 AES-256 keys encrypting stored answers at rest; the first encrypts, all decrypt "
        "(rotation); repeat the flag or separate with commas",
        repeatable=True,
    ),
    Option(
        "max_body",
        "REPRO_MAX_BODY",
        "16MiB",
        values.positive_size,
        "largest request body accepted (413 beyond)",
    ),
    Option(
        "max_entry",
        "REPRO_MAX_ENTRY",
        "32MiB",
        values.positive_size,
        "largest answer stored and read whole: a larger stream is served but not stored, a larger "
        "whole answer is a 502",
    ),
    Option(
        "compression",
        "REPRO_COMPRESSION",
        "1",
        values.compression,
        "zstd level stored answers are compressed at, 1 (fastest) to 19 (smallest); 0 or off = "
        "stored uncompressed (entries of either kind stay readable)",
    ),
    Option(
        "compression_dictionary",
        "REPRO_COMPRESSION_DICTIONARY",
        "1000",
        values.non_negative_int,
        "answers stored before a zstd dictionary is trained from them and shared through the "
        "store, for every process to compress with; 0 = no dictionary",
    ),
    Option(
        "key_check_interval",
        "REPRO_KEY_CHECK_INTERVAL",
        "300",
        values.seconds,
        "seconds an API key stays trusted for cached answers after the upstream accepted it; 0 = "
        "never check",
    ),
    Option(
        "key_check_timeout",
        "REPRO_KEY_CHECK_TIMEOUT",
        "5",
        values.seconds,
        "seconds a key check may wait for the upstream; beyond it the HIT goes on without its word",
    ),
    Option(
        "credential_header",
        "REPRO_CREDENTIAL_HEADER",
        "",
        parse_names,
        "extra header names that carry a tenant's credential, besides Authorization, api-key, "
        "x-api-key, well-known gateways' and names that say so (apikey, X-Auth-Token, ...: "
        "docs/security.md); repeat the flag or separate with commas",
        repeatable=True,
    ),
    Option(
        "unkeyed_header",
        "REPRO_UNKEYED_HEADER",
        "",
        parse_unkeyed,
        "request header names that never change an answer, left out of the cache key besides "
        "the built-in ones (User-Agent, X-Stainless-*, tracing ids: docs/reference.md); a name "
        "or a prefix* (x-trace-*); repeat the flag or separate with commas",
        repeatable=True,
    ),
    Option(
        "verify_rate",
        "REPRO_VERIFY_RATE",
        "0",
        values.fraction,
        "fraction of HITs re-asked upstream in the background to measure drift; 0 = none",
    ),
    Option(
        "probe_interval",
        "REPRO_PROBE_INTERVAL",
        "0",
        values.seconds,
        "seconds between fingerprint probes of models served only from the cache; 0 = no probe",
    ),
    Option(
        "probe_key",
        "REPRO_PROBE_KEY",
        None,
        values.header_token,
        "API key the fingerprint probe sends (no probe without one)",
    ),
    Option(
        "lock_timeout",
        "REPRO_LOCK_TIMEOUT",
        "30",
        values.seconds,
        "seconds identical concurrent misses wait for the first one's answer; 0 = no coalescing",
    ),
    Option(
        "near_cache",
        "REPRO_NEAR_CACHE",
        "64MiB",
        values.size,
        "bytes of stored answers each process keeps in front of standalone Redis, coherent "
        "through pub/sub; 0 = off",
    ),
    Option(
        "store_timeout",
        "REPRO_STORE_TIMEOUT",
        "0.5",
        values.seconds,
        "seconds one store call may take; beyond it the proxy serves without the store",
    ),
    Option(
        "connect_timeout",
        "REPRO_CONNECT_TIMEOUT",
        "10",
        values.seconds,
        "seconds to connect to the upstream",
    ),
    Option(
        "upstream_timeout",
        "REPRO_UPSTREAM_TIMEOUT",
        "600",
        values.seconds,
        "seconds the upstream has to send a whole answer, or may go silent within a stream (bytes "
        "that add nothing to it, such as empty deflate blocks, count as silence)",
    ),
    Option(
        "upstream_ca",
        "REPRO_UPSTREAM_CA",
        None,
        values.readable_file,
        "PEM bundle of CAs trusted for the upstream in addition to the system store",
    ),
    Option(
        "upstream_cert",
        "REPRO_UPSTREAM_CERT",
        None,
        values.readable_file,
        "PEM client certificate shown to an upstream that asks for one; its key inside or in "
        "--upstream-key",
    ),
    Option(
        "upstream_key",
        "REPRO_UPSTREAM_KEY",
        None,
        values.readable_file,
        "PEM private key of --upstream-cert",
    ),
    Option(
        "upstream_connections",
        "REPRO_UPSTREAM_CONNECTIONS",
        "0",
        values.non_negative_int,
        "connections each serving process opens to the upstream at most; calls beyond wait for "
        "one; 0 = no cap",
    ),
    Option(
        "header_timeout",
        "REPRO_HEADER_TIMEOUT",
        "10",
        values.positive_seconds,
        "seconds a client has to send a request's head, from its first byte (from the "
        "connection's opening for the first request)",
    ),
    Option(
        "body_timeout",
        "REPRO_BODY_TIMEOUT",
        "60",
        values.positive_seconds,
        "seconds a request body may go silent between two reads (408 beyond)",
    ),
    Option(
        "send_timeout",
        "REPRO_SEND_TIMEOUT",
        "60",
        values.positive_seconds,
        "seconds a client may leave its answer unread (not one byte taken) before its connection "
        "is closed",
    ),
    Option(
        "keepalive_timeout",
        "REPRO_KEEPALIVE_TIMEOUT",
        "75",
        values.positive_seconds,
        "seconds an idle keep-alive client connection stays open",
    ),
    Option(
        "shutdown_timeout",
        "REPRO_SHUTDOWN_TIMEOUT",
        "25",
        values.seconds,
        "seconds requests in flight at SIGTERM have to finish before they are cut (a second "
        "SIGTERM or SIGINT cuts them at once)",
    ),
    Option(
        "max_connections",
        "REPRO_MAX_CONNECTIONS",
        "auto",
        values.connections,
        "client connections each serving process holds at most (503 beyond); auto = half of the "
        "descriptor limit less 64 reserved",
    ),
    Option(
        "stream_disconnect",
        "REPRO_STREAM_DISCONNECT",
        "finish",
        values.choice(*StreamDisconnect),
        "when a client leaves a cacheable stream: finish reads on and stores it, cancel closes "
        "the upstream connection",
    ),
    Option(
        "cassette",
        "REPRO_CASSETTE",
        None,
        values.cassette,
        "JSONL cassette loaded at start and, unless replaying, written back at exit; needs "
        "--cache-scope shared",
    ),
    Option(
        "workers",
        "REPRO_WORKERS",
        "1",
        values.workers,
        "serving processes sharing the port (SO_REUSEPORT); more than one needs a shared store",
    ),
    Option(
        "access_log",
        "REPRO_ACCESS_LOG",
        "off",
        values.switch,
        "on: one info line per request (method, path, status, cache outcome, duration, bytes; "
        "never a key or a prompt)",
        switch=True,
    ),
    Option(
        "log_level",
        "REPRO_LOG_LEVEL",
        "info",
        values.choice("debug", "info", "warning", "error"),
        "debug, info, warning or error; JSON lines on stderr",
    ),
)
