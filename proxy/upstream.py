"""The one HTTP client to the upstream, and the boundary where its errors become ours."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from proxy import __version__
from proxy.errors import UpstreamTimeout, UpstreamUnreachable

USER_AGENT = f"repro-proxy/{__version__}"

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
    }
)


def _hop_by_hop(headers: CIMultiDictProxy[str]) -> set[str]:
    """The fixed hop-by-hop set plus whatever the Connection header names."""
    named = {h.strip().lower() for v in headers.getall("Connection", []) for h in v.split(",")}
    return named | HOP_BY_HOP


def request_headers(incoming: CIMultiDictProxy[str], drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """Headers to send upstream: end-to-end ones only, none of ours, Host left to the client.
    The client's User-Agent passes unchanged; a client without one is named as this proxy
    (rather than as aiohttp, which names itself when nobody else is)."""
    skip = _hop_by_hop(incoming) | {"host", "content-length", *drop}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in skip or lower.startswith(("x-repro-", "proxy-")):
            continue
        out.add(name, value)
    if "User-Agent" not in out:
        out["User-Agent"] = USER_AGENT
    return out


def auth_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """The caller's credentials exactly as sent, to ask the upstream about them."""
    return {name: headers[name] for name in ("Authorization", "api-key") if name in headers}


def response_headers(incoming: CIMultiDictProxy[str], decoded: bool) -> CIMultiDict[str]:
    """Headers to send back: end-to-end ones; length and encoding are the server's business."""
    skip = _hop_by_hop(incoming) | {"content-length"}
    if decoded:
        skip.add("content-encoding")
    return CIMultiDict((k, v) for k, v in incoming.items() if k.lower() not in skip)


class Upstream:
    """Sends requests to the configured base URL only: bodies never choose the destination."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, read_timeout: float) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._read_timeout = read_timeout

    def url(self, path_qs: str) -> str:
        """Map `/v1/x?q` onto the base URL, which carries its own `/v1`."""
        rest = path_qs[3:] if path_qs.startswith("/v1") else path_qs
        return self._base + rest

    @asynccontextmanager
    async def request(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        data: Any,
        *,
        decode: bool = True,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a request; connection failures and timeouts before the headers become ours."""
        try:
            response = await self._session.request(
                method,
                self.url(path_qs),
                headers=headers,
                data=data,
                allow_redirects=False,
                auto_decompress=decode,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(
                f"The upstream did not answer within {self._read_timeout:g} seconds."
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(
                f"Could not reach the upstream: {type(exc).__name__}."
            ) from exc
        try:
            yield response
        finally:
            response.release()


def client_session(connect_timeout: float, read_timeout: float) -> aiohttp.ClientSession:
    """One pooled session for the process; read timeout applies between chunks."""
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=connect_timeout, connect=connect_timeout, sock_read=read_timeout
    )
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        auto_decompress=True,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def read_body(response: aiohttp.ClientResponse) -> bytes:
    """Read a whole answer, mapping a stall or a cut to our errors."""
    try:
        return await response.read()
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout("The upstream stopped sending its answer.") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(f"The upstream connection broke: {type(exc).__name__}.") from exc
