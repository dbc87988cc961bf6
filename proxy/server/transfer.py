"""`GET /admin/export` and `POST /admin/import`: cassettes in and out of a running proxy.

A proxy with `memory://` holds its answers in its own process, so only the proxy itself can
hand them out or take them in; with Redis these routes spare the operator a second connection
string. Export streams one cassette line per answer. Import takes a cassette in the body,
bounded by `--max-body` (the CLI sends a large cassette in several requests), and keys every
answer for this proxy's own cache scope: with `--cache-scope key`, the API key the answers are
for comes in `X-Repro-Api-Key` and only its keyed HMAC is kept.
"""

from __future__ import annotations

import logging

from aiohttp import web

from proxy.core.call import control
from proxy.core.policy import SHARED, CacheScope
from proxy.errors import InvalidParameter, RequestTooLarge
from proxy.server.admin import (
    NOT_KEPT,
    SELECTED_BY,
    check_admin,
    json_response,
    refuse_unknown,
    store_answers,
)
from proxy.server.bodies import read
from proxy.server.context import SERVICES, Services
from proxy.server.streaming import CLIENT_GONE
from proxy.server.unframed import Unframed
from proxy.store import cassette
from proxy.store.base import Selector, StoreError

API_KEY_HEADER = "X-Repro-Api-Key"

log = logging.getLogger("proxy.admin")


async def admin_export(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    await check_admin(request, services)
    query = request.query
    refuse_unknown(query, SELECTED_BY)
    selector = Selector(**{name: query.get(name) for name in SELECTED_BY})
    skipped = cassette.Skipped()
    lines = cassette.lines(services.store, selector, services.codec, skipped)
    with store_answers():
        first = await anext(lines, None)
    response = Unframed(headers={"Content-Type": "application/x-ndjson", **NOT_KEPT})
    await response.prepare(request)
    try:
        if first is not None:
            await response.write(first)
            async for line in lines:
                await response.write(line)
        await response.write_eof()
        left_out(skipped)
    except StoreError as exc:
        # The status is sent: cut the connection so the client sees a broken stream, never a
        # cassette that looks whole.
        log.warning("export interrupted: the store failed", extra={"error": str(exc)})
        if request.transport is not None:
            request.transport.abort()
    except CLIENT_GONE:
        log.info("export interrupted: the client left")
    return response


def left_out(skipped: cassette.Skipped) -> None:
    """Say that stored answers were left out of a cassette or an export, as no cassette may
    hold them (`cassette.refusal`): the operator looks for them in vain otherwise."""
    if skipped.refused:
        log.warning(
            "answers left out: no cassette may hold them",
            extra={"answers": len(skipped.refused), "first": skipped.refused[0]},
        )


async def admin_import(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    await check_admin(request, services)
    tenant = await _tenant(request, services)
    raw = await _body(request, services)
    try:
        entries = cassette.parse(raw.splitlines(), tenant)
    except cassette.CassetteError as exc:
        raise InvalidParameter(f"The cassette is not valid: {exc}", "body") from None
    with store_answers():
        count = await cassette.load(services.store, entries, services.codec)
    return json_response({"imported": count})


async def _tenant(request: web.Request, services: Services) -> str:
    """The cache partition the answers go to: this proxy's scope, never another one."""
    own = services.settings.cache_scope
    asked = request.query.get("cache_scope", own.value)
    if asked != own.value:
        raise InvalidParameter(
            f"This proxy keys its cache with --cache-scope {own.value}: answers imported for "
            f"{asked!r} would never be served.",
            "cache_scope",
        )
    if own is CacheScope.SHARED:
        return SHARED
    key = control(request.headers, API_KEY_HEADER).strip()
    if not key:
        raise InvalidParameter(
            f"This proxy keys its cache per API key: name the key the answers are for in "
            f"{API_KEY_HEADER} (the CLI's --api-key, or OPENAI_API_KEY).",
            "api_key",
        )
    await services.secret.settle()
    return services.secret.tenant((("authorization", f"Bearer {key}"),))


async def _body(request: web.Request, services: Services) -> bytes:
    limit = services.settings.max_body
    try:
        return await read(request, limit, services.settings.body_timeout)
    except RequestTooLarge:
        raise _too_large(limit) from None


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"An import body may hold at most {limit} bytes (--max-body); send the cassette in parts."
    )
