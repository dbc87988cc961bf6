"""The operators' page's session: a cookie derived from the admin token, never the token itself.

Stateless, so every worker and replica with the same token accepts it: `<expiry>.<HMAC-SHA256
of the expiry under the token>`. It proves the holder once posted the token, expires after
`LIFETIME`, and all sessions end when the token changes. Compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

COOKIE = "repro_admin"
LIFETIME = 12 * 3600


def issue(token: str, now: float) -> str:
    expires = int(now) + LIFETIME
    return f"{expires}.{_mac(token, expires)}"


def valid(request: web.Request, token: str, now: float) -> bool:
    value = request.cookies.get(COOKIE, "")
    expires, _, mac = value.partition(".")
    if not expires.isdigit() or len(expires) > 12 or int(expires) <= now:
        return False
    return hmac.compare_digest(mac.encode(), _mac(token, int(expires)).encode())


def _mac(token: str, expires: int) -> str:
    message = f"repro-proxy admin page session {expires}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()
