"""How the upstream is reached: the forward proxy from the environment, TLS trust and identity."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

from yarl import URL


@dataclass(frozen=True, slots=True)
class Egress:
    """How the upstream is reached: TLS trust and identity, forward proxy, connection cap."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    connections: int = 0  # 0 = no cap
    proxy: str | None = None


def env_proxy(url: str, environ: Mapping[str, str]) -> str | None:
    """The forward proxy for `url` from HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY (lower
    case first, as curl reads them), or None. Read once at start: there is only one upstream."""

    def get(name: str) -> str:
        return environ.get(name.lower()) or environ.get(name.upper()) or ""

    parsed = URL(url)
    proxy = get(f"{parsed.scheme}_proxy") or get("all_proxy")
    if not proxy or not parsed.host:
        return None
    no_proxy = get("no_proxy")
    if no_proxy and proxy_bypass_environment(parsed.host, {"no": no_proxy}):
        return None
    return proxy


class EncryptedKey(ValueError):
    """The client certificate's key wants a passphrase, which the proxy has none of."""


def no_passphrase() -> bytes:
    """OpenSSL's passphrase callback: without one it asks the terminal, which would hold a
    start under a TTY and fail without one with a bare EINVAL."""
    raise EncryptedKey(
        "the private key is encrypted and the proxy takes no passphrase: decrypt it "
        "(openssl pkey -in KEY -out PLAIN) into a file only the proxy's user can read"
    )


def tls_context(egress: Egress) -> ssl.SSLContext:
    """The system's trust store, plus `egress.ca` (in addition, never instead), plus a client
    certificate when the gateway asks for one. Unreadable files raise OSError / ssl.SSLError,
    an encrypted key EncryptedKey."""
    context = ssl.create_default_context()
    if egress.ca:
        context.load_verify_locations(cafile=egress.ca)
    if egress.cert:
        context.load_cert_chain(egress.cert, egress.key, password=no_passphrase)
    return context
