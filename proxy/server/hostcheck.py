"""The Host check as the server applies it to each request (the names: `proxy.core.hosts`), and
the refusal of a page of another site spending the proxy's own identity upstream."""

from __future__ import annotations

from aiohttp import hdrs, web
from yarl import URL

from proxy.core.credentials import of_request
from proxy.core.hosts import HostCheck, Verdict, read_host
from proxy.core.paths import raw_query
from proxy.errors import CrossSite, HostNotAllowed, InvalidHost

FOREIGN_SITES = frozenset({"cross-site", "same-site"})
"""`Sec-Fetch-Site` of a request a page of another origin made: another port of the same host is
the same site, and another origin all the same."""
AMBIENT = frozenset({"cookie"})
"""Credentials a browser adds by itself, whichever page asks: no sign of the page's own key."""


def check_host(request: web.Request, hosts: HostCheck) -> None:
    """Refuse a request naming a host the proxy does not serve (`proxy.core.hosts`). A request
    target in absolute form (`GET http://name/...`) names its host itself, and HTTP reads it
    instead of Host (RFC 9112 3.2.2): both are checked. The HTTP server has already refused an
    HTTP/1.1 request without Host, or with two; an HTTP/1.0 one without it names nothing to
    check (a browser sends Host always). Each request pays a header lookup, a remembered
    verdict and a look at its target's first character."""
    if hosts.any:
        return
    value = request.headers.get(hdrs.HOST)
    if value is not None:
        _judge(hosts, value, "Host")
    target = request.raw_path
    if target[:1] != "/" and target != "*":
        _judge(hosts, _authority(target), "the request target")


def _judge(hosts: HostCheck, value: str, where: str) -> None:
    verdict = hosts.verdict(value)
    if verdict is Verdict.ALLOWED:
        return
    host = read_host(value)
    if verdict is Verdict.INVALID or host is None:
        raise InvalidHost(f"The host in {where} is not a host name with an optional port.")
    raise HostNotAllowed(
        f"This proxy does not serve the host {host.name[:253]!r} ({where}): name it with "
        "--allowed-host / REPRO_ALLOWED_HOST. Unlisted names are refused against DNS rebinding."
    )


def _authority(target: str) -> str:
    """The host and port of an absolute-form target (the whole of an authority-form one); a
    user name or password in it makes it no host at all (RFC 9110 4.2.4)."""
    if "://" not in target:
        return target
    try:
        authority = URL(target, encoded=True).raw_authority
    except ValueError:
        return ""
    return "" if "@" in authority else authority


def check_site(request: web.Request, carriers: tuple[str, ...]) -> None:
    """Refuse a request to the upstream that a browser sent from a page of another site with no
    key of the page's own. Such a page cannot add a key without the upstream's CORS consent and
    cannot read the answer, so it was harmless while every upstream wanted a key; but one that
    knows the proxy itself (a client certificate, `--upstream-cert`; a gateway or a model server
    trusting its network) answered it as the proxy, a `no-cors` POST from any site starting
    fine-tuning jobs or spending on completions. A browser app with its user's key, behind a
    gateway adding CORS, passes, and so does its CORS preflight, which never carries a key and
    asks the upstream only whether the page may send one; a link followed or a URL typed
    (`none`) is no page's request. A request without the header (every program; browsers
    before 2023) pays one lookup."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is None or site.lower() not in FOREIGN_SITES or _preflight(request):
        return
    credentials = of_request(request.headers, raw_query(request.raw_path), carriers)
    if all(name in AMBIENT for name, _ in credentials):
        raise CrossSite(
            "A page of another site may not use this proxy without an API key of its own: the "
            "upstream would answer it as the proxy."
        )


def _preflight(request: web.Request) -> bool:
    return (
        request.method == hdrs.METH_OPTIONS and "Access-Control-Request-Method" in request.headers
    )
