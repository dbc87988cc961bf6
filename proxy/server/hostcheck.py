"""The Host check as the server applies it to each request (the names: `proxy.core.hosts`), the
refusal of a page of another site spending the proxy's own identity upstream, and what the
proxy's own origin is (`own_origin`)."""

from __future__ import annotations

from aiohttp import hdrs, web
from yarl import URL

from proxy.core.hosts import HostCheck, Verdict, read_host
from proxy.errors import CrossSite, HostNotAllowed, InvalidHost

FOREIGN_SITES = frozenset({"cross-site", "same-site"})
"""`Sec-Fetch-Site` of a request a page of another origin made: another port of the same host is
the same site, and another origin all the same."""


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


def check_site(request: web.Request) -> None:
    """Refuse a request to the upstream that a browser sent from a page of another site. Such a
    page cannot read the answer, nor send a key without CORS consent, so it was harmless while
    the upstream refused keyless callers; but one that knows the proxy itself (a gateway
    admitting its client certificate, `--upstream-cert`, or a model server trusting its network)
    answered it as the proxy: a `no-cors` POST from any site started fine-tuning jobs or spent
    on completions. A key the page makes up proves nothing to an upstream that reads none (a
    form can put `?api-key=` in its URL), so none lets such a request through. Same-origin
    requests (a browser app behind a reverse proxy of its own origin), a link followed or a URL
    typed (`none`), and every program (no header: one lookup) are served."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site.lower() in FOREIGN_SITES:
        raise CrossSite(
            "A page of another site may not use this proxy: the upstream would answer it as the "
            "proxy. A gateway in front that serves other sites' pages on purpose can drop "
            "Sec-Fetch-Site."
        )


def own_origin(request: web.Request, origin: str) -> bool:
    """Whether a browser's `Origin` names the proxy as this request reached it: its scheme,
    host and port, default ports filled in. The scheme is https where TLS ends here, or at a
    terminator in front that says so (`X-Forwarded-Proto`, `Forwarded: proto=`; a page cannot
    set either). A page of https://localhost is not the proxy on http://localhost, though both
    name `localhost` and no port."""
    try:
        given = URL(origin)
        here = URL.build(scheme=_scheme(request), authority=request.host)
    except (TypeError, ValueError):
        return False
    if not given.absolute or given.raw_path not in ("", "/") or given.raw_user is not None:
        return False
    return (given.scheme, given.host, given.port) == (here.scheme, here.host, here.port)


def _scheme(request: web.Request) -> str:
    if request.secure:
        return "https"
    claimed = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    forwarded = request.forwarded[:1]
    https = claimed == "https" or any(hop.get("proto", "").lower() == "https" for hop in forwarded)
    return "https" if https else "http"
