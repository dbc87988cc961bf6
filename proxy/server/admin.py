"""Operator routes under /admin: fingerprints, stats, purge. They exist only with a token."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from proxy.core.fingerprints import ModelFingerprints
from proxy.errors import (
    NO_ROUTE,
    InvalidJSON,
    InvalidParameter,
    NotFound,
    StoreUnavailable,
    Unauthorized,
)
from proxy.server import bodies, session
from proxy.server.context import SERVICES, Services
from proxy.store.base import Selector, StoreError
from proxy.upstream.headers import INERT


async def admin_fingerprints(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    await check_admin(request, services, page=True)
    with store_answers():
        states = await services.store.all_fingerprints()
    return json_response(
        {model: fingerprint_report(state) for model, state in sorted(states.items())}
    )


@contextlib.contextmanager
def store_answers() -> Iterator[None]:
    """An admin route whose store fails answers 503 in OpenAI's shape, naming the failure:
    the operator asked for the store's state, which no fallback can stand in for."""
    try:
        yield
    except StoreError as exc:
        raise StoreUnavailable(f"The store did not answer: {exc}") from exc


async def check_admin(request: web.Request, services: Services, page: bool = False) -> None:
    """Admin routes do not exist without a token, and need it as a bearer when they do. What
    the operators' `page` reads (a GET without an Authorization header) may show its session
    instead (`session`): the session reads what the page shows and nothing else, neither a
    write nor the export of every stored prompt. Wrong bearers are counted per address
    (`guesses`)."""
    token = services.settings.admin_token
    if not token:
        raise NotFound(NO_ROUTE)
    header = request.headers.get("Authorization")
    is_read = page and header is None and request.method == "GET"
    if is_read and await session.valid(request, token, services.clock(), services.store):
        return
    scheme, _, given = (header or "").partition(" ")
    bearer = given.strip() if header is not None and scheme.lower() == "bearer" else None
    if header is None:
        raise Unauthorized("This route needs the admin bearer token (--admin-token).")
    if not await token_accepted(request, services, bearer, token):
        raise Unauthorized(
            "This route needs the admin bearer token (--admin-token): the one given is not it."
        )


async def token_accepted(
    request: web.Request, services: Services, given: str | None, token: str
) -> bool:
    """Whether `given` (None: no token in the expected form) is the admin token; a wrong one
    counts against the caller's address, and an address out of guesses is refused (429)
    whatever it gives (`guesses`)."""
    now = services.clock()
    async with services.guesses.attempt(services.store, request.remote, now):
        if given is not None and same_token(given, token):
            return True
        await services.guesses.failed(services.store, request.remote, now)
        return False


def same_token(given: str, token: str) -> bool:
    """Compared in constant time, whatever bytes were given: their digests, since comparing
    strings of different lengths returns at once and would tell the token's length."""
    return hmac.compare_digest(
        hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest(),
        hashlib.sha256(token.encode()).digest(),
    )


def fingerprint_report(state: ModelFingerprints) -> dict[str, Any]:
    current = next(s for s in state.seen if s.fingerprint == state.current)
    return {
        "current": state.current,
        "first_seen": rfc3339(current.first_seen),
        "last_seen": rfc3339(current.last_seen),
        "count": current.count,
        "history": [
            {
                "fingerprint": s.fingerprint,
                "first_seen": rfc3339(s.first_seen),
                "last_seen": rfc3339(s.last_seen),
                "count": s.count,
            }
            for s in state.seen
        ],
    }


def rfc3339(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


async def admin_stats(request: web.Request) -> web.Response:
    """What the store holds, and how this process has served since it started."""
    services = request.app[SERVICES]
    await check_admin(request, services, page=True)
    with store_answers():
        usage = await services.store.usage()
    hits, misses = services.metrics.hit_counts()
    looked = hits + misses
    raw = usage.raw_bytes
    return json_response(
        {
            "entries": usage.entries,
            "bytes": usage.bytes,
            "raw_bytes": raw,
            "compression_ratio": round(usage.bytes / raw, 4) if raw else None,
            "dictionary": _dictionary(services.codec.dictionary),
            "hits": hits,
            "misses": misses,
            "hit_ratio": round(hits / looked, 4) if looked else None,
            "tokens_saved": services.metrics.tokens_saved_total(),
        }
    )


def _dictionary(number: int | None) -> str | None:
    return None if number is None else f"{number:08x}"


async def admin_purge(request: web.Request) -> web.Response:
    """Delete entries by namespace, model and/or fingerprint; `dry_run` only counts them."""
    services = request.app[SERVICES]
    await check_admin(request, services)
    settings = services.settings
    selector, dry_run = purge_request(
        await bodies.read(request, settings.max_body, settings.body_timeout)
    )
    with store_answers():
        matched = await services.store.purge(selector, dry_run)
    return json_response(
        {"matched": matched, "deleted": 0 if dry_run else matched, "dry_run": dry_run}
    )


SELECTED_BY = ("namespace", "model", "fingerprint")
_PURGE_FLAGS = ("all", "dry_run")


def purge_request(raw: bytes) -> tuple[Selector, bool]:
    """Parse a purge body; an empty selector must say `"all": true`, so nobody wipes by accident.
    A field the route does not read, or a flag that is not a JSON boolean, is refused: read as
    absent, a misspelt filter would purge a whole namespace, and `"dry_run": "true"` for real."""
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise InvalidJSON("The purge body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidJSON("The purge body must be a JSON object.")
    refuse_unknown(body, (*SELECTED_BY, *_PURGE_FLAGS))
    fields = {}
    for name in SELECTED_BY:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidParameter(f"'{name}' must be a string.", name)
        fields[name] = value
    for name in _PURGE_FLAGS:
        if not isinstance(body.get(name, False), bool):
            raise InvalidParameter(f"'{name}' must be true or false.", name)
    selector = Selector(**fields)
    if selector == Selector() and body.get("all") is not True:
        raise InvalidParameter(
            'Name a namespace, model or fingerprint, or send "all": true to purge everything.',
            "all",
        )
    return selector, body.get("dry_run") is True


def refuse_unknown(given: Iterable[str], known: Iterable[str]) -> None:
    """Refuse the first name a route does not read, rather than select more than was asked."""
    allowed = set(known)
    for name in given:
        if name not in allowed:
            shown = name if len(name) <= 64 else name[:63] + "…"
            raise InvalidParameter(
                f"Unknown selector {shown!r}: this route reads {', '.join(sorted(allowed))}.",
                shown,
            )


NOT_KEPT = {"Cache-Control": "no-store", **INERT}
"""Admin answers hold stored prompts and answers, read by a browser with the page's session
too: no cache on the way, nor the browser's own, may keep a copy; and as every answer carrying
the upstream's bytes, they never run as a page on the proxy's origin, whatever a browser makes
of them."""


def json_response(value: Any) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type="application/json", headers=NOT_KEPT)
