"""OpenSSL's reason for a failed handshake, as one short phrase for a one-line error.

Each client wraps the ssl module's error in its own (aiohttp, redis-py, httpx), and its text
carries OpenSSL's bracketed code and C source line; what an operator needs is the reason:
`certificate has expired`, `Hostname mismatch, certificate is not valid for 'x'`, `wrong
version number` (a plain server answering a TLS client).
"""

from __future__ import annotations

import ssl

_DEPTH = 6
"""Wrappings followed: each client wraps once or twice; bounded all the same."""


def tls_reason(exc: BaseException | None) -> str | None:
    """The reason of the first ssl.SSLError in `exc` or what it wraps, or None."""
    for _ in range(_DEPTH):
        if exc is None:
            return None
        if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
            return str(exc.verify_message)
        if isinstance(exc, ssl.SSLError):
            reason = getattr(exc, "reason", None)
            if isinstance(reason, str) and reason:
                return reason.replace("_", " ").lower()
            return str(exc.args[-1] if exc.args else type(exc).__name__).lower()
        exc = exc.__cause__ or exc.__context__
    return None
