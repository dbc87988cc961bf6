"""A graceful stop: the requests in flight at a stop signal finish, within a bound.

Three attributes of aiohttp's request handler are read, because aiohttp exposes no event for
them: `_request_in_progress` and `_messages` tell a connection with a request in flight from an
idle one, and `_handler_waiter` is the future aiohttp's own shutdown has it set when its request
ends (`_current_request` and `_task_handler` too, to answer or cancel a request cut).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from proxy.errors import ShuttingDown
from proxy.server.refusals import closing_answer

log = logging.getLogger("proxy.serving")


CUT_GRACE = 1.0
"""Seconds a request cut at the end of the drain has to unwind (its fill lock released)."""


@dataclass(slots=True)
class Signals:
    """The first stop signal starts the drain; a second one cuts it short."""

    first: asyncio.Event = field(default_factory=asyncio.Event)
    second: asyncio.Event = field(default_factory=asyncio.Event)

    def received(self) -> None:
        if self.first.is_set():
            self.second.set()
        self.first.set()


async def drain(manager: web.Server, timeout: float, cut: asyncio.Event) -> None:
    """Let the requests in flight finish, as nginx's graceful stop does: idle keep-alive
    connections are closed now, each busy one after its answer (a whole answer, or a stream to
    its end, stored as usual; its client may have left), for at most `timeout` seconds or until
    `cut` is set; the requests left then are cancelled. aiohttp's own shutdown stops reading
    every connection at once, so that a request whose body was still arriving waits for it
    until cut; and a stuck upstream must not keep the process alive past an orchestrator's
    grace period, which then kills it without a word (aiohttp would wait 60 s, twice)."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    connections = manager.connections
    answered: dict[RequestHandler, asyncio.Future[None]] = {}
    for handler in connections:
        if not _asked(handler):
            handler.force_close()
            continue
        # aiohttp's own signal that the connection's request has ended (set by its shutdown)
        done = handler._handler_waiter = loop.create_future()
        done.add_done_callback(functools.partial(_ended, handler))
        answered[handler] = done
    log.info(
        "stopping: draining requests in flight",
        extra={"requests": len(answered), "connections": len(connections), "timeout": timeout},
    )
    if answered and timeout > 0:
        waiting = asyncio.ensure_future(asyncio.wait(answered.values()))
        cutting = asyncio.ensure_future(cut.wait())
        try:
            await asyncio.wait(
                {waiting, cutting}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiting.cancel()
            cutting.cancel()
    took = round(loop.time() - began, 3)
    left = [handler for handler, done in answered.items() if not done.done()]
    if not left:
        log.info(
            "stopping: every request finished", extra={"requests": len(answered), "seconds": took}
        )
        return
    why = "a second signal" if cut.is_set() else "--shutdown-timeout"
    log.warning("stopping: requests cut", extra={"requests": len(left), "by": why, "seconds": took})
    for handler in left:
        _unavailable(handler)
    tasks = [h._task_handler for h in left if h._task_handler is not None]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=CUT_GRACE)


def _unavailable(handler: RequestHandler) -> None:
    """A request cut before a byte of its answer went out is told so, as nginx tells it (a
    503 to retry elsewhere), rather than finding its connection closed under it, which a
    client cannot tell from a crash. The connection is closed after it: whatever the request
    writes as it unwinds goes nowhere. An answer begun can only be cut."""
    request, transport = handler._current_request, handler.transport
    if transport is None or transport.is_closing():
        return
    if request is not None and request.writer.output_size > 0:
        return
    transport.write(_CUT)
    transport.close()


_CUT = closing_answer(
    ShuttingDown("The proxy stopped before answering (--shutdown-timeout ran out); retry.")
)


def _asked(handler: RequestHandler) -> bool:
    """A request is being served on the connection, or has arrived and waits its turn."""
    return handler._request_in_progress or bool(handler._messages)


def _ended(handler: RequestHandler, _: object) -> None:
    """Its request answered, the connection ends as after a `Connection: close` request (this
    only marks it; aiohttp's loop closes it once the answer is out)."""
    handler.close()
