"""The operators' page's session: a value derived from the admin token, never the token itself.

`<expiry>.<nonce>.<HMAC-SHA256 of both under the token>`: every worker and replica with the
same token can check it, in constant time. It proves the holder once posted the token, expires
after `LIFETIME`, and all sessions end when the token changes. The store marks each session
issued (by a digest of its value) and each one logged out, until it would have expired: a
session reads only while the first mark holds and the second does not, so a copy taken before
a logout reads nothing after, on every process that shares the store, and neither does any
session once the store lost its marks (restarted empty, flushed), where a logout remembered
alone was forgotten and its session read again. The random nonce makes each login's session a
new one. A store that cannot say admits no session: the bearer still works.

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


async def issue(token: str, now: float, store: Store) -> str:
    """A new session, marked issued in the store (StoreError when the store cannot)."""
    value = signed(token, int(now) + LIFETIME)
    await store.mark(_name(value, ISSUED), LIFETIME)
    return value


def signed(token: str, expires: int) -> str:
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
        issued = await store.marked(_name(value, ISSUED))
        return issued and not await store.marked(_name(value, ENDED))
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
        await store.mark(_name(value, ENDED), expires - now)
    except StoreError:
        log.warning("logout not remembered: the store failed; the session lives until it expires")


ISSUED, ENDED = "issued:", "session:"  # a logout's mark keeps the name it always had


def _name(value: str, mark: str) -> str:
    return mark + hashlib.sha256(value.encode()).hexdigest()


def _mac(token: str, expires: int, nonce: str) -> str:
    message = f"repro-proxy admin page session {expires} {nonce}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()
