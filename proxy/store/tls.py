"""A `rediss://` URL's TLS options, checked as redis-py would use them, before anything connects.

redis-py reads its certificate files on the first connection, inside the event loop: a missing
CA file or a key that does not match its certificate would make every store call fail, and an
encrypted key would have OpenSSL ask the terminal for a passphrase. Here each is one line at
start naming the option. The options that turn verification off are named too, so the start
can say so: managed services that present self-signed certificates need them, so they are
allowed, never silently.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping

from redis.connection import FALSE_STRINGS

_CERT_REQS = {"none", "optional", "required"}
"""redis-py's spellings of ssl.CERT_NONE / CERT_OPTIONAL / CERT_REQUIRED."""


class _Encrypted(ValueError):
    pass


def _no_passphrase() -> bytes:
    """OpenSSL's passphrase callback: without one it would ask the terminal."""
    raise _Encrypted("ssl_keyfile: the private key is encrypted and no passphrase is taken")


def check_tls(options: Mapping[str, str]) -> None:
    """Build the TLS context the options describe, as redis-py will; a ValueError names the
    option that cannot be used, never a file's content."""
    reqs = options.get("ssl_cert_reqs", "required")
    if reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs={reqs!r}: expected none, optional or required")
    certfile, keyfile = options.get("ssl_certfile"), options.get("ssl_keyfile")
    if keyfile and not certfile:
        raise ValueError("ssl_keyfile needs ssl_certfile, the certificate it is the key of")
    context = ssl.create_default_context()
    try:
        if certfile:
            context.load_cert_chain(certfile, keyfile or None, password=_no_passphrase)
    except _Encrypted as exc:
        raise ValueError(f"{exc}: decrypt it (openssl pkey -in KEY -out PLAIN)") from None
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"ssl_certfile / ssl_keyfile: unusable: {_reason(exc)}") from None
    for name in ("ssl_ca_certs", "ssl_ca_path", "ssl_ciphers"):
        value = options.get(name)
        try:
            if value and name == "ssl_ciphers":
                context.set_ciphers(value)
            elif value and name == "ssl_ca_certs":
                context.load_verify_locations(cafile=value)
            elif value and not os.path.isdir(value):  # OpenSSL reads a folder only when asked
                raise ValueError(f"{name}: no directory {value!r}")
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"{name}: unusable: {_reason(exc)}") from None


def weakened(options: Mapping[str, str]) -> list[str]:
    """The options given that turn a check of the server's certificate off."""
    found = []
    if options.get("ssl_cert_reqs") == "none":
        found.append("ssl_cert_reqs=none")
    hostname = options.get("ssl_check_hostname", "")
    if hostname.upper() in FALSE_STRINGS:
        found.append(f"ssl_check_hostname={hostname}")
    return found


def _reason(exc: OSError | ssl.SSLError) -> str:
    """OpenSSL's reason (not every SSLError has one), or the system's for a file."""
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or str(exc.args[-1] if exc.args else exc)
        return reason.replace("_", " ").lower()
    return (exc.strerror or type(exc).__name__).lower()
