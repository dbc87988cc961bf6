"""Relaying speech on a miss: the sound goes to the client as it comes, recorded on the side.

An app that plays speech as it arrives hears the first words as soon as the upstream sends
them, as it would without the proxy; read whole first, a long passage would be silent for
seconds. The recording is stored once the upstream's body ended cleanly, before the client's
ends, and only within `--max-entry` (past it the sound goes on, unrecorded). A body cut short
reaches the client cut short (its connection closed), and is never stored. When the client
leaves, `--stream-disconnect finish` reads the upstream on and stores the sound (so the retry
is a HIT), for `--upstream-timeout` at most; `cancel` closes the upstream connection at once.
An answer that is not sound (an error, a JSON body sent with a 200) is read whole, as any
other route's, and never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from proxy.core.call import Answer, Call, repro_headers
from proxy.core.entry import is_sound_type, request_id_of
from proxy.core.policy import StreamDisconnect
from proxy.errors import UpstreamError
from proxy.server.caching import as_upstream_allows, call_upstream, unrelayed
from proxy.server.context import Services
from proxy.server.recording import record
from proxy.server.streaming import CLIENT_GONE
from proxy.upstream.client import UpstreamResponse
from proxy.upstream.headers import response_headers

log = logging.getLogger("proxy.sound")


async def forward_sound(services: Services, request: web.Request, call: Call) -> web.StreamResponse:
    upstream = await call_upstream(services, request, call, relayed=True)
    try:
        content_type = upstream.headers.get("Content-Type", "")
        if upstream.status != 200 or not is_sound_type(content_type):
            return await unrelayed(services, call, upstream)
        call = as_upstream_allows(services, call, upstream.headers)
        return await _Sound(services, request, call, upstream).relay(content_type)
    finally:
        upstream.release()


class _Sound:
    """One upstream body copied to one client, kept whole on the side while it may be stored."""

    def __init__(
        self, services: Services, request: web.Request, call: Call, upstream: UpstreamResponse
    ) -> None:
        self.services = services
        self.request = request
        self.call = call
        self.upstream = upstream
        self.kept: list[bytes] | None = [] if call.plan.store else None
        self.size = 0
        self.held = 0  # of `kept`, counted in services.recordings
        self.gone_at: float | None = None

    async def relay(self, content_type: str) -> web.StreamResponse:
        headers = response_headers(self.upstream.headers, decoded=True)
        headers.update(repro_headers(self.call, self.call.plan.outcome, "none"))
        response = web.StreamResponse(headers=headers)
        await response.prepare(self.request)
        try:
            return await self._copy(response, content_type)
        finally:
            self.services.recordings.give(self.held)

    async def _copy(self, response: web.StreamResponse, content_type: str) -> web.StreamResponse:
        try:
            async for chunk in self.upstream.chunks():
                self._keep(chunk)
                await self._send(response, chunk)
                if self.gone_at is not None and not self._worth_reading():
                    return response
        except UpstreamError as exc:
            log.warning("upstream sound broke", extra={"key": self.call.key, "error": exc.code})
            if self.gone_at is None and self.request.transport is not None:
                self.request.transport.close()  # the client must see it broken, as sent
            return response
        if self.kept:
            body = b"".join(self.kept)
            request_id = request_id_of(self.upstream.headers)
            answer = Answer(body, content_type, "none", 0, 0, False, request_id=request_id)
            await record(self.services, self.call, answer)
        if self.gone_at is None:
            with contextlib.suppress(*CLIENT_GONE):
                await response.write_eof()
        return response

    def _keep(self, chunk: bytes) -> None:
        """Keep `chunk` within --max-entry, and within what the recordings in flight may hold
        together (proxy.core.budget); past either, the sound is relayed, not stored."""
        if self.kept is None:
            return
        self.size += len(chunk)
        if self.size > self.services.settings.max_entry:
            self._drop("over --max-entry")
        elif not self.services.recordings.take(len(chunk)):
            self._drop("recordings in flight at their bound")
        else:
            self.held += len(chunk)
            self.kept.append(chunk)

    def _drop(self, why: str) -> None:
        log.info("sound not stored", extra={"key": self.call.key, "why": why})
        self.kept = None
        self.services.recordings.give(self.held)
        self.held = 0

    async def _send(self, response: web.StreamResponse, chunk: bytes) -> None:
        if self.gone_at is not None:
            return
        try:
            await response.write(chunk)
        except CLIENT_GONE:
            self.gone_at = asyncio.get_running_loop().time()
            log.info("client left mid-sound", extra={"key": self.call.key})

    def _worth_reading(self) -> bool:
        """Read on for a client that left only while the sound may still be stored, and for
        at most --upstream-timeout after it left."""
        settings = self.services.settings
        if self.kept is None or settings.stream_disconnect is not StreamDisconnect.FINISH:
            return False
        limit = settings.upstream_timeout
        gone_for = asyncio.get_running_loop().time() - (self.gone_at or 0.0)
        return not limit or gone_for < limit
