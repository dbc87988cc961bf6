"""Who may ask the simulator: programs on this machine, never a web page.

The simulator has no authentication and keeps what it is sent: `/_sim/requests` shows each
request's headers, the API key the proxy forwarded included (a developer's real key, when the
shell that records against the sim has one), and `/_sim/faults` or `/_sim/fingerprint` decide
what the next answers say, so what a cassette recorded against it holds. A page open in the
developer's browser could read the first by rebinding its own name to 127.0.0.1 and write the
others with a cross-site `no-cors` POST. So, as `serve` does (`proxy.core.hosts`), the sim
answers only the names it serves in `Host`, and refuses a request a browser sent from a page of
another origin: `Sec-Fetch-Site` saying so, or an `Origin` other than the sim's own (every
browser sends one with a POST).
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from yarl import URL

from proxy.core.hosts import HostCheck, Verdict, allowed_hosts, read_host
from proxy.tools.sim.handlers import error_response

FOREIGN_SITES = frozenset({"cross-site", "same-site"})
"""`Sec-Fetch-Site` of a request a page of another origin made (another port of 127.0.0.1 is
the same site, and another origin all the same)."""


def refusal(request: web.Request, hosts: HostCheck) -> web.Response | None:
    """The answer to a request the simulator does not serve, or None."""
    host = request.headers.get(hdrs.HOST)
    if host is not None and not hosts.any:
        verdict = hosts.verdict(host)
        if verdict is Verdict.INVALID:
            return error_response(400, "The Host header is not a host name.", code="invalid_host")
        if verdict is Verdict.REFUSED:
            return error_response(
                403,
                "This simulator answers localhost, its own address and its --host name only "
                "(against DNS rebinding).",
                code="host_not_allowed",
            )
    if request.headers.get("Sec-Fetch-Site", "").lower() in FOREIGN_SITES or not _own_origin(
        request.headers.get(hdrs.ORIGIN), host
    ):
        return error_response(
            403,
            "This simulator serves programs, not web pages of another origin.",
            code="browser_request",
        )
    return None


def _own_origin(origin: str | None, host: str | None) -> bool:
    """Whether `Origin` is absent, or names the simulator as `Host` does."""
    if origin is None:
        return True
    if host is None or read_host(host) is None:
        return False
    try:
        url = URL(origin)
    except ValueError:
        return False
    return url.scheme == "http" and url.raw_authority.lower() == host.lower()


def guard(listen: str) -> Middleware:
    """The middleware refusing what `refusal` refuses, for a simulator listening on `listen`."""
    hosts = HostCheck(allowed_hosts(listen, ()))

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = refusal(request, hosts)
        return await handler(request) if refused is None else refused

    return check
