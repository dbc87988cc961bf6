"""A gateway in front of the sim that routes `?provider=own` or `X-Provider: own` to a
tenant's own server, which confirms the deletion of any id: what a deletion routed by keyed
headers or a keyed query may reach, and must not make the proxy forget the owner's answers."""

from __future__ import annotations

import asyncio

import httpx
import orjson

from tests.fixtures_procs import Sim
from tests.hostile import Received, http_answer

WAIT = 10.0
OWN = {"query": ("?provider=own", {}), "header": ("", {"X-Provider": "own"})}


class Gateway:
    """Routes `?provider=own` or `X-Provider: own` to a tenant's own server, which answers a
    deletion of any id with a 200; everything else to the sim, the owner's upstream."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.own_deletes = 0

    async def __call__(self, writer: asyncio.StreamWriter, received: Received) -> None:
        method, target = received.request_line.split(" ")[:2]
        if "provider=own" in target or received.headers.get("x-provider") == "own":
            assert method == "DELETE", target
            self.own_deletes += 1
            answer = orjson.dumps({"id": target, "object": "response.deleted", "deleted": True})
            writer.write(http_answer(answer, "Content-Type: application/json"))
        else:
            sent = {k: v for k, v in received.headers.items() if k in ("authorization",)}
            if received.body:
                sent["content-type"] = "application/json"
            async with httpx.AsyncClient(timeout=WAIT) as client:
                got = await client.request(
                    method, self.sim.url + target, content=received.body, headers=sent
                )
            status = f"{got.status_code} {got.reason_phrase}"
            kind = "Content-Type: " + got.headers.get("content-type", "application/json")
            writer.write(http_answer(got.content, kind, status=status))
        await writer.drain()
