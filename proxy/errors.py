"""Errors the proxy itself answers with, in OpenAI's error shape.

    ProxyError                         500  internal_error (a fault of our own)
     ├── InvalidJSON                   400  invalid_json
     ├── InvalidParameter              400  invalid_value (names the parameter)
     │    └── InvalidType              400  invalid_type (a parameter the proxy acts on)
     ├── InvalidPath                   400  invalid_path (a pass-through path leaving /v1/,
     │                                      or read by a lenient server as a route of ours)
     ├── InvalidHeader                 400  invalid_header (a value not in Latin-1, an
     │                                      X-Repro-* header given twice with two values)
     │    └── ExpectationFailed        417  invalid_header (an Expect besides 100-continue)
     ├── InvalidHost                   400  invalid_host (a Host that names no host)
     ├── HostNotAllowed                403  host_not_allowed (--allowed-host)
     ├── CrossSite                     403  cross_site_request (a page of another site)
     ├── NotFound                      404  not_found (no route of the proxy's, or admin
     │                                      routes without --admin-token)
     ├── MethodNotAllowed              405  method_not_allowed (with `Allow`; CONNECT too)
     ├── RequestTimeout                408  request_timeout (a body that went silent)
     ├── InvalidBodyLength             400  invalid_body_length (pass-through)
     ├── InvalidBody                   400  invalid_body (broken chunks or Content-Encoding)
     ├── UnsupportedEncoding           415  unsupported_content_encoding (br, zstd, ...)
     ├── MalformedRequest              400  invalid_http (not HTTP/1.1 the server can parse)
     ├── RequestTooLarge               413  request_too_large
     ├── Unauthorized                  401  unauthorized (admin routes)
     ├── TooManyGuesses                429  too_many_guesses (wrong admin tokens)
     ├── CacheMissError                504  cache_miss
     ├── ReplayPassthrough             501  replay_passthrough (a route replay cannot answer)
     ├── StoreUnavailable              503  store_unavailable (admin routes only)
     ├── TooManyConnections            503  too_many_connections (--max-connections)
     ├── TooManyBodies                 503  too_many_bodies (bodies being read at once)
     ├── ShuttingDown                  503  shutting_down (cut at --shutdown-timeout)
     └── UpstreamError
          ├── UpstreamUnreachable      502  upstream_unreachable (also: an answer that is not
          │                                  well-formed HTTP, or framed as smugglers frame)
          ├── UpstreamTooLarge         502  upstream_answer_too_large (over --max-entry)
          └── UpstreamTimeout          504  upstream_timeout

Upstream answers with 4xx/5xx are not errors of ours: they pass through untouched.
"""

from __future__ import annotations

import orjson


class ProxyError(Exception):
    status = 500
    code = "internal_error"
    type = "server_error"
    final = False
    """An answer a retry cannot change: it says `x-should-retry: false`, which the OpenAI SDKs
    honour instead of retrying a 5xx (one request, not three)."""

    def __init__(
        self, message: str, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        if self.final:
            self.headers["x-should-retry"] = "false"

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )


class InvalidJSON(ProxyError):
    status = 400
    code = "invalid_json"
    type = "invalid_request_error"


class InvalidParameter(ProxyError):
    status = 400
    code = "invalid_value"
    type = "invalid_request_error"


class InvalidType(InvalidParameter):
    """A parameter the proxy acts on (`stream`, `background`) of another JSON type than the
    API's: a lenient upstream could read `"true"` or `1` as true where the proxy does not."""

    code = "invalid_type"


class InvalidPath(ProxyError):
    status = 400
    code = "invalid_path"
    type = "invalid_request_error"


class InvalidHeader(ProxyError):
    status = 400
    code = "invalid_header"
    type = "invalid_request_error"


class ExpectationFailed(InvalidHeader):
    """An `Expect` other than 100-continue (RFC 9110 10.1.1)."""

    status = 417


class InvalidHost(ProxyError):
    """HTTP/1.1 requires a Host header, and one naming a host (RFC 9112 3.2)."""

    status = 400
    code = "invalid_host"
    type = "invalid_request_error"


class HostNotAllowed(ProxyError):
    """A name the proxy does not serve: the mark of a page that rebound its own name to the
    proxy's address (DNS rebinding). 403, as the dev servers that check Host answer: 421
    Misdirected Request invites a client to retry on another connection."""

    status = 403
    code = "host_not_allowed"
    type = "permission_error"
    final = True


class CrossSite(ProxyError):
    """A request a browser sent from a page of another site: an upstream that knows the proxy
    itself (its client certificate, its place on the network) would answer it as the proxy,
    for a page that cannot even read the answer."""

    status = 403
    code = "cross_site_request"
    type = "permission_error"
    final = True


class NotFound(ProxyError):
    """No route of the proxy's: a message of ours alone, since the path is the client's."""

    status = 404
    code = "not_found"
    type = "invalid_request_error"


NO_ROUTE = "The proxy has no route for this path."

NO_API_ROUTE = (
    "The proxy has no route for this path: OpenAI's API is under /v1/ (a client's base URL ends "
    "in /v1, such as http://127.0.0.1:8080/v1), Azure OpenAI's under /openai/."
)
"""A path outside every prefix the proxy serves: most often an SDK given the proxy's address
without its /v1, which asks /chat/completions."""


class MethodNotAllowed(ProxyError):
    """A method the path's route does not serve; `Allow` names those it does (RFC 9110 15.5.6)."""

    status = 405
    code = "method_not_allowed"
    type = "invalid_request_error"


class RequestTimeout(ProxyError):
    status = 408
    code = "request_timeout"
    type = "invalid_request_error"


class InvalidBodyLength(ProxyError):
    """A streamed body that broke its declared length: nothing past it is sent upstream."""

    status = 400
    code = "invalid_body_length"
    type = "invalid_request_error"


class InvalidBody(ProxyError):
    """A body that cannot be read as its framing says: a broken chunk, bytes that are not the
    gzip or deflate their Content-Encoding names (or that end before or after its stream does)."""

    status = 400
    code = "invalid_body"
    type = "invalid_request_error"


class UnsupportedEncoding(ProxyError):
    """A body in a coding the proxy does not inflate, on a route that must read it: the answer
    names the codings it does read, in `Accept-Encoding` as RFC 9110 (15.5.16) asks."""

    status = 415
    code = "unsupported_content_encoding"
    type = "invalid_request_error"


class MalformedRequest(ProxyError):
    """A request the HTTP server could not parse: its request line, a header or its framing."""

    status = 400
    code = "invalid_http"
    type = "invalid_request_error"


class RequestTooLarge(ProxyError):
    status = 413
    code = "request_too_large"
    type = "invalid_request_error"


class Unauthorized(ProxyError):
    status = 401
    code = "unauthorized"
    type = "invalid_request_error"


class TooManyGuesses(ProxyError):
    """The admin token was guessed wrong too often from one address; `Retry-After` says when
    the next attempt is heard."""

    status = 429
    code = "too_many_guesses"
    type = "invalid_request_error"
    final = True


class CacheMissError(ProxyError):
    status = 504
    code = "cache_miss"
    type = "cache_error"
    final = True


class ReplayPassthrough(ProxyError):
    """Replay mode answers only from the cache: a pass-through route would reach the upstream.
    501, as for a method the server does not implement, and never worth a retry."""

    status = 501
    code = "replay_passthrough"
    type = "cache_error"
    final = True


class StoreUnavailable(ProxyError):
    """Only routes that exist to read the store fail with it; the cache itself fails open."""

    status = 503
    code = "store_unavailable"


class TooManyConnections(ProxyError):
    """Answered by the listener itself, before aiohttp reads the request."""

    status = 503
    code = "too_many_connections"


class TooManyBodies(ProxyError):
    """A request body that would take the bodies being read at once past their budget
    (proxy.core.budget): worth a retry in a moment (`Retry-After`)."""

    status = 503
    code = "too_many_bodies"


class ShuttingDown(ProxyError):
    """A request still unanswered when the drain ran out of --shutdown-timeout: worth a retry
    on another replica (`Retry-After`), never on this connection, which is closed after it."""

    status = 503
    code = "shutting_down"


class UpstreamError(ProxyError):
    type = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    status = 502
    code = "upstream_unreachable"


class UpstreamTooLarge(UpstreamError):
    """A whole answer is buffered to be stored: past the bound, it is refused, never kept."""

    status = 502
    code = "upstream_answer_too_large"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
