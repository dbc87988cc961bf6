"""Who asks for a stored answer outside the cacheable routes' own flow (a response or a
chat completion fetched by id, a recorded `GET`): the tenant, keyed headers, query and
namespace, read once; and the headers such an answer is served with, as a HIT's."""

from __future__ import annotations

from typing import NamedTuple

from aiohttp import web

from proxy.core import policy
from proxy.core.call import NAMESPACE, checked_namespace, control
from proxy.core.credentials import Credentials, of_request
from proxy.core.entry import Entry
from proxy.core.keyed import HeaderLines, vary_of
from proxy.core.paths import raw_query
from proxy.core.policy import Outcome
from proxy.errors import CacheMissError
from proxy.server.context import Services
from proxy.upstream.headers import INERT

MAX_SHOWN_PATH = 200
"""Characters of a path a test session is told of: a path may be KiBs of the client's text."""


class Caller(NamedTuple):
    tenant: str
    lines: HeaderLines  # the request's keyed headers
    query: str  # as sent, credential parameters included
    namespace: str


async def caller_of(services: Services, request: web.Request) -> Caller:
    """Who asks, read once for the lookup and the key check."""
    await services.secret.settle()
    query = raw_query(request.raw_path)
    credentials = of_request(request.headers, query, services.credential_names)
    namespace = checked_namespace(control(request.headers, NAMESPACE))
    lines = services.keying.lines(request.headers)
    return Caller(services.secret.tenant(credentials), lines, query, namespace)


def vary_for(services: Services, caller: Caller, in_query: Credentials) -> str:
    """The digest of the caller's keyed lines its key and id index name (`vary_of`)."""
    shared = services.settings.cache_scope is policy.CacheScope.SHARED
    return vary_of(caller.lines, in_query, shared)


def served_headers(services: Services, key: str, entry: Entry, content_type: str) -> dict[str, str]:
    """The headers of a stored answer served outside the cacheable routes, as a HIT's."""
    return {
        "X-Repro-Cache": Outcome.HIT.value,
        "X-Repro-Key": key,
        "X-Repro-Fingerprint": entry.fingerprint,
        "Age": str(max(0, int(services.clock() - entry.stored_at))),
        "Content-Type": content_type,
        **({"x-request-id": entry.request_id} if entry.request_id else {}),
        **INERT,  # the upstream's bytes, on the origin of the operators' page
    }


def absent(services: Services, request: web.Request, message: str) -> CacheMissError:
    """The cache miss of a request answered only from what was stored (by id, or a recorded
    `GET`), told to a test session's watch (it fails the test even if its code swallows the
    error)."""
    if services.watch is not None:
        services.watch.absent(f"{request.method} {request.path[:MAX_SHOWN_PATH]}")
    return CacheMissError(message, headers={"X-Repro-Cache": Outcome.MISS.value})
