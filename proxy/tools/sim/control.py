"""The simulator's /_sim/* control routes: tests steer it at run time through these.

Fingerprint rotation, tunables, accepted keys, queued faults, recorded requests and stream
statistics; unauthenticated, since the simulator only ever serves tests and demos.
"""

from __future__ import annotations

from aiohttp import web

from proxy.tools.sim.handlers import json_response
from proxy.tools.sim.state import (
    JSON,
    STATE,
    TUNABLES,
    BadRequest,
    Fault,
    SimState,
    check_fingerprints,
    check_tunable,
    parse_object,
)

MAX_CONTROL_BODY = 64 * 1024
"""A control request steers the simulator; only /v1 bodies may be large. Queued faults keep
their bodies, so this bounds them (with MAX_FAULTS) too."""


async def _control_body(request: web.Request) -> JSON:
    raw = await request.read()
    if len(raw) > MAX_CONTROL_BODY:
        raise BadRequest(f"a control request's body may hold at most {MAX_CONTROL_BODY} bytes")
    return parse_object(raw)


async def _get_fingerprint(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_response({"fingerprint": state.fingerprint, "fingerprints": state.fingerprints})


async def _set_fingerprint(request: web.Request) -> web.Response:
    """`fingerprint`: answer with it from now on (a rotation; ends any alternation);
    `fingerprints`: answer with one of them at random (a fleet mid-rollout), [] to stop."""
    state, data = request.app[STATE], await _control_body(request)
    if "fingerprint" not in data and "fingerprints" not in data:
        raise BadRequest("give fingerprint or fingerprints", "fingerprint")
    value = data.get("fingerprint", state.fingerprint)
    if not (value is None or isinstance(value, str)):
        raise BadRequest("fingerprint must be a string or null", "fingerprint")
    try:
        alternation = check_fingerprints(data.get("fingerprints", []))
    except ValueError as exc:
        raise BadRequest(str(exc), "fingerprints") from exc
    state.fingerprint, state.fingerprints = value, alternation
    return json_response({"fingerprint": value, "fingerprints": alternation})


def _tunables(state: SimState) -> JSON:
    return {name: getattr(state, name) for name in TUNABLES}


async def _get_settings(request: web.Request) -> web.Response:
    return json_response(_tunables(request.app[STATE]))


async def _set_settings(request: web.Request) -> web.Response:
    """Change latency, chunk_delay or divergence at run time; all or nothing."""
    state, data = request.app[STATE], await _control_body(request)
    try:
        updates = {name: check_tunable(name, data[name]) for name in TUNABLES if name in data}
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    for name, value in updates.items():
        setattr(state, name, value)
    return json_response(_tunables(state))


async def _set_keys(request: web.Request) -> web.Response:
    """Replace the accepted API keys at run time (an empty list accepts any key): revocation."""
    keys = (await _control_body(request)).get("api_keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise BadRequest("'api_keys' must be a list of non-empty strings")
    request.app[STATE].api_keys = frozenset(keys)
    return json_response({"api_keys": sorted(keys)})


async def _set_access_programs(request: web.Request) -> web.Response:
    """The access programs a Responses request naming none is answered under, as the API
    resolves them from the organization's authorization (null: the implicit standard)."""
    programs = (await _control_body(request)).get("access_programs")
    if not (programs is None or isinstance(programs, dict)):
        raise BadRequest("'access_programs' must be an object or null", "access_programs")
    request.app[STATE].access_programs = programs
    return json_response({"access_programs": programs})


async def _add_fault(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.queue(Fault.from_json(await _control_body(request)))
    return json_response({"queued": len(state.faults)})


async def _clear_faults(request: web.Request) -> web.Response:
    request.app[STATE].faults.clear()
    return json_response({"queued": 0})


async def _get_requests(request: web.Request) -> web.Response:
    return json_response(list(request.app[STATE].requests))


async def _clear_requests(request: web.Request) -> web.Response:
    request.app[STATE].forget_requests()
    return json_response([])


async def _stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_response(
        {
            "requests": dict(state.hits),
            "streams_completed": state.streams_completed,
            "streams_cancelled": state.streams_cancelled,
            "realtime_closes": list(state.realtime_closes),
        }
    )


def routes() -> list[web.RouteDef]:
    return [
        web.get("/_sim/fingerprint", _get_fingerprint),
        web.post("/_sim/fingerprint", _set_fingerprint),
        web.get("/_sim/settings", _get_settings),
        web.post("/_sim/settings", _set_settings),
        web.post("/_sim/keys", _set_keys),
        web.post("/_sim/access_programs", _set_access_programs),
        web.post("/_sim/faults", _add_fault),
        web.delete("/_sim/faults", _clear_faults),
        web.get("/_sim/requests", _get_requests),
        web.delete("/_sim/requests", _clear_requests),
        web.get("/_sim/stats", _stats),
    ]
