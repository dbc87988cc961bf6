"""The simulator's aiohttp application: the /v1 routes, the /_sim/* controls, one state."""

from __future__ import annotations

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
    return app
