"""The simulator's aiohttp application: the /v1 routes, the /_sim/* controls, one state."""

from __future__ import annotations

import secrets

from aiohttp import web

from proxy.tools.sim import control, guard, handlers, media, realtime
from proxy.tools.sim.state import STATE, SimSettings, SimState

_MAX_BODY = 64 * 1024 * 1024


def create_sim_app(settings: SimSettings) -> web.Application:
    """Build the simulator; its state lives in app[STATE] so several can run side by side."""
    app = web.Application(
        middlewares=[
            guard.guard(settings.host),
            handlers.v1_middleware,
            handlers.bad_request_middleware,
        ],
        client_max_size=_MAX_BODY,
    )
    app[STATE] = SimState.from_settings(settings)
    app.add_routes([*handlers.routes(), *media.routes(), *realtime.routes(), *control.routes()])
    app.on_response_prepare.append(_request_id)
    return app


async def _request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every API answer names its request, as OpenAI's do (`x-request-id`, `req_` and 32 hex
    digits), so that what a proxy keeps of an answer's headers is tried against the sim."""
    if request.path.startswith(("/v1/", "/openai/")):
        response.headers.setdefault("x-request-id", f"req_{secrets.token_hex(16)}")
