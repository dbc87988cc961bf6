"""A pass-through path that reaches the upstream as one of the proxy's own routes would: an
upstream merging slashes, decoding escapes or dropping `;params` reads `/v1//chat/completions`
as `/v1/chat/completions`, and under an Azure resource's root (`--upstream` without `/v1`) the
pass-through sends `/v1/openai/...` where `/openai/...` goes (`Upstream.aliases`). Forwarded,
such a request would be answered uncached and unseeded, the determinism promise silently
skipped, and a deletion by id would leave the cache serving what it deleted."""

from __future__ import annotations

from aiohttp import web
from yarl import URL

from proxy.core.paths import lenient
from proxy.errors import InvalidPath
from proxy.server.context import SERVICES
from proxy.server.observed import UNROUTED_PATH

PASSING = frozenset({"/v1/{tail}", "/openai/{tail}", UNROUTED_PATH})
"""The routes that pass a request through (or refuse it unrouted): an alias of one is no
route of the proxy's own."""
FORWARDED = ("/v1/", "/openai/")
"""Where the routes the proxy answers with the upstream's help are: `/metrics`, `/healthz` or
`/admin/...` never go upstream, so a path reaching the upstream as one would is no alias."""


async def refuse_alias(request: web.Request, target: str) -> None:
    """Refuse the pass-through `target` if it reads as one of the proxy's own routes, naming
    the route's own path; nothing is sent."""
    upstream = request.app[SERVICES].upstream
    for path in upstream.aliases(target.partition("?")[0]):
        clone = request.clone(rel_url=URL.build(path=lenient(path)))
        match = await request.app.router.resolve(clone)
        resource = match.route.resource
        if match.http_exception is not None or resource is None:
            continue
        own = resource is request.match_info.route.resource or resource.canonical in PASSING
        if own or not resource.canonical.startswith(FORWARDED):
            continue
        raise InvalidPath(
            f"This path reads as {resource.canonical}, a route of the proxy's own: send it as "
            "that path, without extra slashes, `;` parameters, escapes or another prefix.",
            "path",
        )
