"""`/admin/ui`: the operators' page, behind the admin token.

Static files from the package (no build step, no CDN): one page whose script posts the token
once, keeps the session it gets in exchange and reads the admin routes with it (see `session`).
The token never appears in a URL, a cookie, the browser's storage or a log. Every answer shown
is the upstream's text, so the script writes it as text only (`textContent`), and the
Content-Security-Policy allows no inline script, no other origin, and no framing.
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import parse_qs

import orjson
from aiohttp import web

from proxy.errors import NO_ROUTE, NotFound, Unauthorized
from proxy.server import bodies, session
from proxy.server.admin import store_answers, token_accepted
from proxy.server.context import SERVICES
from proxy.server.hostcheck import own_origin

STATIC = frozenset({"ui.css", "ui.js"})
MAX_LOGIN_BODY = 4096
FORM = "application/x-www-form-urlencoded"
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make a browser post Origin: null
    "Cache-Control": "no-store",
}


def _file(name: str) -> bytes:
    return resources.files("proxy.server").joinpath("static", name).read_bytes()


def _token(request: web.Request) -> str:
    token = request.app[SERVICES].settings.admin_token
    if not token:
        raise NotFound(NO_ROUTE)
    return token


async def admin_ui(request: web.Request) -> web.Response:
    """The page: its script signs in or reads with the session it keeps (`session`), so the
    page itself holds nothing to protect."""
    _token(request)
    page = _file("ui.html")
    return web.Response(body=page, content_type="text/html", charset="utf-8", headers=HEADERS)


async def ui_static(request: web.Request) -> web.Response:
    _token(request)
    name = request.match_info["name"]
    if name not in STATIC:
        raise NotFound(NO_ROUTE)
    kind = "text/css" if name.endswith(".css") else "text/javascript"
    return web.Response(body=_file(name), content_type=kind, charset="utf-8", headers=HEADERS)


async def ui_login(request: web.Request) -> web.Response:
    """Check the posted token (constant time, wrong ones counted per address) and answer a
    session, which the page's script keeps in `sessionStorage` (`session`)."""
    token = _token(request)
    _same_origin(request)
    services = request.app[SERVICES]
    # before reading the body
    await services.guesses.check(services.store, request.remote, services.clock())
    given = await _posted_token(request, services.settings.body_timeout)
    if not await token_accepted(request, services, given, token):
        raise Unauthorized("That is not the admin token.")
    with store_answers():
        made = await session.issue(token, services.clock(), services.store)
    body = orjson.dumps({"session": made, "expires_in": session.LIFETIME})
    return web.Response(body=body, content_type="application/json", headers=HEADERS)


async def _posted_token(request: web.Request, idle: float) -> str | None:
    """The login form's one field, read as every body is (bounded in size and in silence), and
    only as the form sends it: aiohttp's own form reader would take a chunked body up to
    --max-body, without a pause limit, and spool multipart files to disk for anyone."""
    if request.content_type != FORM:
        raise web.HTTPUnsupportedMediaType(text=f"the login form posts {FORM}")
    raw = await bodies.read(request, MAX_LOGIN_BODY, idle)
    try:
        fields = parse_qs(raw.decode("latin-1"), max_num_fields=8)
    except ValueError:  # more fields than the form has
        return None
    return fields.get("token", [None])[0]


async def ui_logout(request: web.Request) -> web.Response:
    """Revoke the session shown for every copy of it (`session`); the page forgets its own."""
    token = _token(request)
    _same_origin(request)
    services = request.app[SERVICES]
    await session.revoke(request, token, services.clock(), services.store)
    return web.Response(status=204, headers=HEADERS)


def _same_origin(request: web.Request) -> None:
    """A form posted from another site (or an opaque origin, "null") is refused: browsers name
    the posting page's origin. Clients without one (curl) are not browsers to forge with."""
    origin = request.headers.get("Origin")
    if origin is not None and not own_origin(request, origin):
        raise web.HTTPForbidden(text="cross-site form refused")
