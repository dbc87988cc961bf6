"""The one HTTP client to the upstream, and the boundary where its errors become ours."""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy import __version__
from proxy.errors import UpstreamTimeout, UpstreamUnreachable
from proxy.http1 import Body, ConnectTimeout, HTTPError, Pool, Response

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


REQUEST_SKIP = HOP_BY_HOP | {"host", "content-length"}
"""What never goes upstream as the client sent it; callers add to it (lower case)."""
_RESPONSE_SKIP = HOP_BY_HOP | {"content-length"}
_DECODED_SKIP = _RESPONSE_SKIP | {"content-encoding"}


def _skipped(headers: CIMultiDictProxy[str], fixed: frozenset[str]) -> frozenset[str]:
    """`fixed` plus whatever the Connection header names (rarely anything: then no new set)."""
    named = headers.getall("Connection", ())
    if not named:
        return fixed
    return fixed | {h.strip().lower() for v in named for h in v.split(",")}


def request_headers(
    incoming: CIMultiDictProxy[str], skip: frozenset[str] = REQUEST_SKIP
) -> CIMultiDict[str]:
    """Headers to send upstream: end-to-end ones only, none of ours, Host left to the client.
    The client's User-Agent passes unchanged; a client without one is named as this proxy
    (rather than as aiohttp, which names itself when nobody else is)."""
    skip = _skipped(incoming, skip)
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
    skip = _skipped(incoming, _DECODED_SKIP if decoded else _RESPONSE_SKIP)
    return CIMultiDict([(k, v) for k, v in incoming.items() if k.lower() not in skip])


class Upstream:
    """Sends requests to the configured base URL only: bodies never choose the destination."""

    def __init__(self, base_url: str, connect_timeout: float, read_timeout: float) -> None:
        self._base_path = URL(base_url).raw_path.rstrip("/")
        self._pool = Pool(base_url, connect_timeout, read_timeout)

    def target(self, path_qs: str) -> str:
        """Map `/v1/x?q` onto the base URL's path, which carries its own `/v1`."""
        rest = path_qs[3:] if path_qs.startswith("/v1") else path_qs
        return self._base_path + rest

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        data: Body,
        *,
        decode: bool = True,
    ) -> Response:
        """The answer's head; connection failures and timeouts before it become ours. The
        caller releases the answer."""
        try:
            return await self._pool.request(method, self.target(path_qs), headers, data, decode)
        except ConnectTimeout as exc:
            raise UpstreamTimeout(
                f"Could not connect to the upstream within {self._pool.connect_timeout:g} seconds."
            ) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"The upstream did not answer within {self._pool.read_timeout:g} seconds."
            ) from exc
        except HTTPError as exc:
            raise UpstreamUnreachable(f"Could not reach the upstream: {exc}.") from exc

    async def fetch(
        self, method: str, path_qs: str, headers: Mapping[str, str], data: Body
    ) -> tuple[int, bytes]:
        """Status and whole body of one answer, for the proxy's own side requests."""
        response = await self.send(method, path_qs, headers, data)
        return response.status, await read_body(response)

    async def close(self) -> None:
        await self._pool.close()


async def read_body(response: Response) -> bytes:
    """Read a whole answer, mapping a stall or a cut to our errors; the answer is released
    either way (its connection goes back to the pool, or is closed if the answer broke)."""
    try:
        return await response.read()
    except TimeoutError as exc:
        raise UpstreamTimeout("The upstream stopped sending its answer.") from exc
    except HTTPError as exc:
        raise UpstreamUnreachable(f"The upstream connection broke: {exc}.") from exc
    finally:
        response.release()
