"""The operators' page's session: a value derived from the admin token, never the token itself.

`<expiry>.<nonce>.<HMAC-SHA256 of both under the token>`: every worker and replica with the
same token can check it, in constant time. It proves the holder once posted the token, expires
after `LIFETIME`, and all sessions end when the token changes. Logging out revokes the session
in the store (its name is a digest of the value) until it would have expired, so a copy taken
before reads nothing after, on every process that shares the store; the random nonce makes each
login's session a new one. A store that cannot say whether a session was revoked admits none:
the bearer still works.

The page keeps it in `sessionStorage` and sends it in the `HEADER`, never in a cookie: a
browser sends a cookie to every port of its host (and SameSite counts them one site), so any
other server on `localhost` would receive it, while `sessionStorage` is the origin's alone, port
included. A header is also one no other site's page can make a browser send: no CSRF.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets

from aiohttp import web

from proxy.store.base import Store, StoreError

HEADER = "X-Repro-Session"
LIFETIME = 12 * 3600

log = logging.getLogger("proxy.admin")


def issue(token: str, now: float) -> str:
    expires = int(now) + LIFETIME
    nonce = secrets.token_hex(16)
    return f"{expires}.{nonce}.{_mac(token, expires, nonce)}"


_ISSUED = re.compile(r"([1-9][0-9]{0,11})\.([0-9a-f]{32})\.([0-9a-f]{64})")
"""A session as `issue` spells it, and no other way: revoked by the digest of its value, a
session accepted under a second spelling (`0` before its expiry) would outlive its logout."""


def _expiry(value: str, token: str, now: float) -> int | None:
    """The expiry of a genuine, unexpired session; None for anything else."""
    issued = _ISSUED.fullmatch(value)
    if issued is None:
        return None
    expires, nonce, mac = issued.groups()
    if int(expires) <= now:
        return None
    if not hmac.compare_digest(mac.encode(), _mac(token, int(expires), nonce).encode()):
        return None
    return int(expires)


async def valid(request: web.Request, token: str, now: float, store: Store) -> bool:
    value = request.headers.get(HEADER, "")
    if _expiry(value, token, now) is None:
        return False
    try:
        return not await store.revoked(_name(value))
    except StoreError:
        return False


async def revoke(request: web.Request, token: str, now: float, store: Store) -> None:
    """End the request's session everywhere the store is shared (a session only: anyone may
    post a logout, and only the holder of a real session can make the store remember one)."""
    value = request.headers.get(HEADER, "")
    expires = _expiry(value, token, now)
    if expires is None:
        return
    try:
        await store.revoke(_name(value), expires - now)
    except StoreError:
        log.warning("logout not remembered: the store failed; the session lives until it expires")


def _name(value: str) -> str:
    return "session:" + hashlib.sha256(value.encode()).hexdigest()


def _mac(token: str, expires: int, nonce: str) -> str:
    message = f"repro-proxy admin page session {expires} {nonce}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()
