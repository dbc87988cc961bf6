"""aiohttp's pool of upstream connections, each refusing answers no request asked for.

aiohttp parses whatever arrives on an idle pooled connection and hands it to the next request
sent there, and reads past any number of informational answers; neither has a setting, so the
pool's protocol is a subclass of aiohttp's `ResponseHandler` (see docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, cast

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_parser import RawResponseMessage
from aiohttp.streams import StreamReader

log = logging.getLogger("proxy.upstream")


class Solicited(ResponseHandler):
    """A pooled upstream connection that takes no answer it did not ask for, and no end of
    informational ones. aiohttp parses whatever arrives on an idle connection in its pool and
    queues it, and the next request sent on that connection, another tenant's as likely as
    not, reads the queued answer as its own: an upstream (or a gateway) sending an answer
    late, or one of its own making, would have it served and stored under a request it never
    saw. Bytes that arrive once the final answer to the last request has ended, before the
    next request is sent, close the connection instead (RFC 9112 9.3.2: a client closes on an
    unsolicited answer). A 101 ends HTTP on its connection, never pooled again: a WebSocket
    the proxy asked for (`Upstream.websocket`), or one a request did not ask for, which
    `status_error` refuses. And aiohttp reads past any number of informational answers (1xx),
    each resetting the wait for the next byte: they carry nothing of the answer, so once the
    first has come the final one is due within that wait (the upstream timeout), or a stream
    request, whose head waits only on silences, would wait for ever."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._answer: StreamReader | None = None  # the body of the last request's final answer
        self._sent = False  # the request went out whole: its answer is being waited for
        self._informed = False  # an informational answer came
        self._final_due: asyncio.TimerHandle | None = None

    def set_response_params(self, **params: Any) -> None:
        """A request is about to be sent: what comes now answers it."""
        self._answer = None
        self._sent = self._informed = False
        self._stop_waiting()
        super().set_response_params(**params)

    def start_timeout(self) -> None:
        """The request went out whole (aiohttp starts the wait for its answer here): a 1xx sent
        while a client's body was still going up does not shorten the time for sending it."""
        super().start_timeout()
        self._sent = True
        if self._informed:
            self._wait_for_final()

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        if data[0].code == 101:  # a WebSocket's: what follows is its frames, read by their parser
            self._answer = None
            self._stop_waiting()
        elif not 100 <= data[0].code < 200:
            self._answer = data[1]
            self._stop_waiting()
        else:
            self._informed = True
            if self._sent:
                self._wait_for_final()
        super().feed_data(data, size)

    def data_received(self, data: bytes) -> None:
        if data and self._answer is not None and self._answer.is_eof():
            self._answer = None
            log.warning("upstream sent bytes nobody asked for: connection closed")
            if self.transport is not None:
                self.transport.close()
            return
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _wait_for_final(self) -> None:
        if self._final_due is None and self.read_timeout:
            loop = asyncio.get_running_loop()
            self._final_due = loop.call_later(self.read_timeout, self._no_final_answer)

    def _stop_waiting(self) -> None:
        if self._final_due is not None:
            self._final_due.cancel()
            self._final_due = None

    def _no_final_answer(self) -> None:
        self._final_due = None
        self.set_exception(
            aiohttp.ServerTimeoutError("informational answers only, and no final one in time")
        )
        if self.transport is not None:
            self.transport.close()


class Connector(aiohttp.TCPConnector):
    """aiohttp's pool, of connections that refuse unsolicited answers (`Solicited`). The
    protocol factory is the one attribute of aiohttp's connector set here."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        factory = functools.partial(Solicited, loop=self._loop)
        self._factory = cast("functools.partial[ResponseHandler]", factory)
