"""What the commands read from a server (a proxy's admin routes, an upstream): hostile bytes.

An answer is read only up to MAX_ANSWER bytes and within a deadline in all (a server dripping a
byte a second never holds a command past it), parsed by orjson (whose nesting limit makes a
deeply nested answer an error, not a RecursionError), and every failure is `Unusable`: one line
for the operator, never a traceback. Redirects are never followed, and a loopback URL is
never asked through HTTP_PROXY and its kin, so neither a token nor a request goes anywhere but
the URL given. httpx is imported only when a command runs.
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from proxy.errors import NO_ROUTE

if TYPE_CHECKING:
    import httpx

MAX_ANSWER = 64 * 1024 * 1024
"""Above any answer a proxy stores (--max-entry) and its admin reports."""


class Unusable(Exception):
    """An answer the command cannot use, or none in time; the message is one line."""


def header_safe(value: str, source: str) -> str:
    """A credential as an HTTP header can carry it (printable ASCII), else a one-line refusal
    naming where it came from: never a traceback, never the value."""
    if value.isascii() and value.isprintable():
        return value
    raise Unusable(f"{source}: not printable ASCII (a stray newline, tab or typographic quote?)")


def shown_url(url: str) -> str:
    """The URL as messages print it: without user info or query, where a password or a key may
    be. Messages reach terminals and CI logs; credentials must not."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed [: the text up to any query, without user info
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}".partition("?")[0].partition("#")[0]
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def loopback(url: str) -> bool:
    """Whether `url` names this machine (a loopback address, or localhost)."""
    host = urlsplit(url).hostname
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def in_the_clear(url: str) -> bool:
    """Whether a credential sent to `url` crosses a network unencrypted: plain http to a host
    other than this machine's loopback."""
    return urlsplit(url).scheme == "http" and not loopback(url)


def trusts_environment(url: str) -> bool:
    """Whether the HTTP client may read HTTP_PROXY and its kin for `url`: never for loopback,
    which no forward proxy can reach, and where it would only be handed the admin token or the
    API key (in the clear, for http://) to fail the request."""
    return not loopback(url)


def cleartext_warning(url: str, what: str) -> str | None:
    """The warning to print before sending `what` to `url`, if it goes in the clear."""
    if not in_the_clear(url):
        return None
    return (
        f"warning: {what} goes in the clear (http://) to {shown_url(url)}: anyone on the path "
        "can read it; use https:// or an SSH tunnel to a loopback address"
    )


def trust() -> ssl.SSLContext:
    """What the commands trust over https: the system's store (which SSL_CERT_FILE and
    SSL_CERT_DIR name, as for the proxy itself, OpenSSL and curl) plus certifi's bundle, httpx's
    own default; one in addition to the other, never instead, whatever the host."""
    import certifi

    context = ssl.create_default_context()
    context.load_verify_locations(cafile=certifi.where())
    return context


def fetch(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    timeout: float,
    params: Mapping[str, Any] | None = None,
    json: Any = None,
    content: bytes | None = None,
    client: httpx.Client | None = None,
) -> tuple[int, bytes]:
    """The status and body of one request, the body read within `timeout` seconds in all and
    up to MAX_ANSWER bytes."""
    import httpx

    deadline = time.monotonic() + timeout
    own = client is None
    session = client or httpx.Client(
        follow_redirects=False, timeout=timeout, trust_env=trusts_environment(url), verify=trust()
    )
    try:
        asked = {"Accept-Encoding": "identity", **headers}
        request = session.build_request(
            method, url, headers=asked, params=params, json=json, content=content
        )
        response = session.send(request, stream=True, follow_redirects=False)
        try:
            body = bytearray()
            for chunk in response.iter_raw():
                body += chunk
                if len(body) > MAX_ANSWER:
                    raise Unusable(f"the answer is larger than {MAX_ANSWER} bytes")
                if time.monotonic() > deadline:
                    raise Unusable(f"no complete answer within {timeout:g} s (--timeout)")
            return response.status_code, _decoded(response, bytes(body))
        finally:
            response.close()
    except httpx.TimeoutException:
        raise Unusable(f"no answer within {timeout:g} s (--timeout)") from None
    except httpx.HTTPError as exc:
        raise Unusable(f"{type(exc).__name__}: {exc}") from None
    finally:
        if own:
            session.close()


async def exchange(
    client: httpx.AsyncClient, path: str, body: Any, headers: Mapping[str, str], timeout: float
) -> tuple[int, httpx.Headers, bytes]:
    """POST `body` as JSON to `path` of the client's base URL: the status, headers and body,
    read as `fetch` reads them. httpx's own errors pass through (a transport failure is one
    outcome among N for the audit)."""
    import asyncio

    import httpx

    asked = {"Accept-Encoding": "identity", **headers}
    try:
        async with asyncio.timeout(timeout):
            request = client.build_request("POST", path, json=body, headers=asked)
            response = await client.send(request, stream=True, follow_redirects=False)
            try:
                data = bytearray()
                async for chunk in response.aiter_raw():
                    data += chunk
                    if len(data) > MAX_ANSWER:
                        raise Unusable(f"the answer is larger than {MAX_ANSWER} bytes")
                return response.status_code, response.headers, _decoded(response, bytes(data))
            except httpx.StreamConsumed:  # an answer made in memory (a MockTransport's)
                return response.status_code, response.headers, response.content
            finally:
                await response.aclose()
    except TimeoutError:
        raise Unusable(f"no complete answer within {timeout:g} s (--timeout)") from None


def _decoded(response: httpx.Response, body: bytes) -> bytes:
    """The body as sent when it is not compressed; a compressed one inflated, within bounds."""
    coding = response.headers.get("content-encoding", "identity").strip().lower()
    if coding in ("", "identity"):
        return body
    import zlib

    if coding not in ("gzip", "deflate"):
        raise Unusable(f"the answer is in an encoding this command does not read: {coding!r}")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib, by its header
    try:
        inflated = inflater.decompress(body, MAX_ANSWER + 1)
    except zlib.error as exc:
        raise Unusable(f"the answer's {coding} is broken: {exc}") from None
    if len(inflated) > MAX_ANSWER:
        raise Unusable(f"the answer is larger than {MAX_ANSWER} bytes")
    return inflated


def parsed(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Unusable(f"the answer is not JSON ({exc})") from None


def reason(status: int, body: bytes) -> str:
    """`HTTP 503: <the proxy's one-line message>`, or the start of whatever else answered. A
    404 of the proxy's own (no route) on an admin path most often means a proxy started without
    --admin-token, which has none: the line says so, since that 404 cannot (it tells nobody they
    exist). Another server's 404 (a wrong --url) gets no such hint."""
    try:
        message = orjson.loads(body)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        message = None
    if not isinstance(message, str):
        message = body[:200].decode(errors="replace")
    said = f"HTTP {status}: {message[:500]}" if message else f"HTTP {status}"
    if status == 404 and message == NO_ROUTE:
        said += " (a proxy started without --admin-token has no /admin routes)"
    return said
