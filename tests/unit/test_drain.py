"""While the process drains (after SIGTERM), /readyz says so and every answer closes its
connection: a load balancer asking on an open connection routes elsewhere, and no client sends
its next request into a connection the proxy is about to close."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from proxy import config
from proxy.server.app import create_app
from proxy.server.context import SERVICES


async def test_readyz_answers_503_and_answers_close_while_stopping() -> None:
    settings = config.load({"upstream": "http://127.0.0.1:9/v1"}, environ={})
    app = create_app(settings, environ={})
    client: TestClient[object, object] = TestClient(TestServer(app))
    await client.start_server()
    try:
        ready = await client.get("/readyz")
        assert ready.status == 200
        assert ready.headers.get("Connection") != "close"
        app[SERVICES].lifecycle.stopping = True
        draining = await client.get("/readyz")
        assert draining.status == 503
        assert await draining.json() == {"status": "unavailable", "reason": "shutting down"}
        assert draining.headers["Connection"] == "close"
        alive = await client.get("/healthz")
        assert alive.status == 200  # still serving: liveness must not restart it mid-drain
        assert alive.headers["Connection"] == "close"
    finally:
        await client.close()
