"""Simulated OpenAI-compatible upstream (`repro-proxy sim`) for demos, load tests and e2e tests.

It answers like the real API (bodies, SSE frames, seeded determinism tied to the
system_fingerprint) so the proxy can be exercised offline, and lets tests steer it at run time
through unauthenticated /_sim/* routes: fingerprint rotation, queued faults, runtime latency,
recorded requests and stream statistics. All mutable state lives in one `SimState` on the app.

    state.py       settings, the shared state, queued faults, input validation
    generation.py  the answers (pure): chat, text completions, embeddings
    handlers.py    the /v1 routes: recording, authentication, faults, streaming
    control.py     the /_sim/* routes tests steer it with
    guard.py       Host names served, and no web page of another origin (rebinding, CSRF)
    app.py         create_sim_app: the aiohttp application
    cli.py         the command's flags, and run_sim
"""

from __future__ import annotations

from proxy.tools.sim.cli import add_arguments, run_sim, settings_from_args

__all__ = ["add_arguments", "run_sim", "settings_from_args"]
