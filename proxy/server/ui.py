"""`/admin/ui`: the operators' page, behind the admin token.

Static files from the package (no build step, no CDN): a login form that posts the token once,
then a page whose script reads the admin routes with the session cookie (see `session`). The
token never appears in a URL, a cookie or a log. Every answer shown is the upstream's text, so
the script writes it as text only (`textContent`), and the Content-Security-Policy allows no
inline script, no other origin, and no framing.
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import parse_qs, urlsplit

from aiohttp import web

from proxy.errors import NO_ROUTE, NotFound
from proxy.server import bodies, session
from proxy.server.admin import token_accepted
from proxy.server.context import SERVICES

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
_FAILED = b'<p id="error" class="error" hidden>'
_FAILED_SHOWN = b'<p id="error" class="error">'


def _file(name: str) -> bytes:
    return resources.files("proxy.server").joinpath("static", name).read_bytes()


def _token(request: web.Request) -> str:
    token = request.app[SERVICES].settings.admin_token
    if not token:
        raise NotFound(NO_ROUTE)
    return token


def _page(body: bytes, status: int = 200) -> web.Response:
    return web.Response(
        body=body, status=status, content_type="text/html", charset="utf-8", headers=HEADERS
    )


async def admin_ui(request: web.Request) -> web.Response:
    """The page for a session, else the login form."""
    token = _token(request)
    services = request.app[SERVICES]
    if await session.valid(request, token, services.clock(), services.store):
        return _page(_file("ui.html"))
    return _page(_file("login.html"))


async def ui_static(request: web.Request) -> web.Response:
    _token(request)
    name = request.match_info["name"]
    if name not in STATIC:
        raise NotFound(NO_ROUTE)
    kind = "text/css" if name.endswith(".css") else "text/javascript"
    return web.Response(body=_file(name), content_type=kind, charset="utf-8", headers=HEADERS)


async def ui_login(request: web.Request) -> web.Response:
    """Check the posted token (constant time, wrong ones counted per address) and set the
    session cookie: HttpOnly (no script reads it), SameSite=Strict (no other site's request
    carries it), Secure over HTTPS, the proxy's own or a terminating proxy's."""
    token = _token(request)
    _same_origin(request)
    services = request.app[SERVICES]
    # before reading the body
    await services.guesses.check(services.store, request.remote, services.clock())
    given = await _posted_token(request, services.settings.body_timeout)
    if not await token_accepted(request, services, given, token):
        return _page(_file("login.html").replace(_FAILED, _FAILED_SHOWN), status=401)
    response = web.HTTPSeeOther("/admin/ui", headers=HEADERS)
    response.set_cookie(
        session.COOKIE,
        session.issue(token, request.app[SERVICES].clock()),
        max_age=session.LIFETIME,
        path="/admin",
        httponly=True,
        samesite="Strict",
        secure=over_https(request),
    )
    raise response


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
    """Delete the browser's cookie, and revoke its session for every copy of it (`session`)."""
    token = _token(request)
    _same_origin(request)
    services = request.app[SERVICES]
    await session.revoke(request, token, services.clock(), services.store)
    response = web.HTTPSeeOther("/admin/ui", headers=HEADERS)
    response.del_cookie(session.COOKIE, path="/admin")
    raise response


def _same_origin(request: web.Request) -> None:
    """A form posted from another site (or an opaque origin, "null") is refused: browsers name
    the posting page's origin. Clients without one (curl) are not browsers to forge with."""
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise web.HTTPForbidden(text="cross-site form refused")


def over_https(request: web.Request) -> bool:
    """HTTPS here, or at a TLS-terminating proxy in front that says so (`X-Forwarded-Proto`,
    `Forwarded: proto=`). Believing a client that claims it only adds `Secure`, which a
    browser on plain HTTP then refuses to store: no one gains a cookie by lying."""
    if request.secure:
        return True
    claimed = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return claimed == "https" or any(
        hop.get("proto", "").lower() == "https" for hop in request.forwarded[:1]
    )
