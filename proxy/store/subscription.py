"""The subscription the near-caches hear invalidations on: a connection of its own, read
until it fails, and never trusted to be alive only because it is quiet."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoPermissionError

from proxy.store import layout
from proxy.store.redis_client import FAILURES, mapped

HEARTBEAT = 2.0
"""Seconds of silence after which a subscription is pinged, and then counts as lost: longer
than a Redis busy with a slow command, short next to how long a replaced answer may be served."""


async def listen(
    client: Any,
    channel: str,
    subscribed: Callable[[], None],
    message: Callable[[str], None],
    *,
    heartbeat: float = HEARTBEAT,
) -> None:
    """Deliver `channel`'s messages until the connection fails (then raise). A connection can
    die without a reset ever arriving (a partition, a firewall or NAT dropping it while idle),
    its messages then lost unseen: after `heartbeat` seconds of silence it is pinged, and one
    silent for `heartbeat` more counts as failed."""
    connection = listener(client)
    try:
        with mapped("listen"):
            await connection.connect()  # type: ignore[no-untyped-call]
            await connection.send_command("SUBSCRIBE", channel)
            pinged = False
            while True:
                reply = await connection.read_response(timeout=heartbeat, push_request=True)
                if reply is None:  # silence (a reply is never None): ask, once
                    if pinged:
                        raise TimeoutError
                    await connection.send_command("PING")
                    pinged = True
                    continue
                pinged = False
                if not isinstance(reply, list) or len(reply) != 3:  # a pong, among others
                    continue
                if reply[0] == b"message":
                    message(layout.text(reply[2]))
                elif reply[0] == b"subscribe":
                    subscribed()
    finally:
        await connection.disconnect()


async def permitted(client: Any, channel: str, timeout: float | None) -> bool:
    """Whether the user may subscribe to `channel` (ACLs); a server that does not answer
    within `timeout` refuses nothing."""
    connection = listener(client)
    try:
        async with asyncio.timeout(timeout):
            await connection.connect()  # type: ignore[no-untyped-call]
            await connection.send_command("SUBSCRIBE", channel)
            await connection.read_response()
    except NoPermissionError:
        return False
    except (*FAILURES, TimeoutError):
        return True
    finally:
        await connection.disconnect()
    return True


def listener(client: aioredis.Redis) -> AbstractConnection:
    """A connection of its own for a subscription, of the client's class and options, that never
    reconnects unseen: a subscription lost for a moment has lost the messages sent meanwhile, so
    its listener must hear of it. It waits for messages without a timer: a quiet channel is no
    failure. A bare connection, not redis-py's PubSub: a near-cache hears one message per write
    anywhere, its own included, and PubSub's bookkeeping per message costs more than the message."""
    pool = client.connection_pool
    never = Retry(NoBackoff(), 0, supported_errors=())
    options = {**pool.connection_kwargs, "retry": never, "socket_timeout": None}
    connection: AbstractConnection = pool.connection_class(**options)
    return connection
