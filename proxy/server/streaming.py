"""Forwarding a streamed answer: chunks go to the client as they come, recorded on the side.

The response headers wait for the upstream's first frame that names the fingerprint or carries
a token (see `StreamRecorder.named`); that costs the client nothing, since its first token is
in that frame. A stream that breaks before its
first frame is answered 502, like an upstream that could not be reached.

The recording is stored only after a clean end, and then before the bytes that end it (`[DONE]`,
or the Responses API's `response.completed`) are passed on: a client that has seen the end of a
stream finds it stored when it asks again, even on another connection or another replica
sharing the store. Nothing the upstream sends after that end reaches the client, and a break
after it ends the client's stream cleanly: the first client gets what a HIT replays. Nor can the
upstream hold the client's stream open past that end: its own end (the body's, and a compressed
stream's) is waited for END_GRACE at most, then its connection is closed. When the
client leaves mid-stream, `--stream-disconnect finish` reads the upstream on and stores it (so
the retry is a HIT, as nginx does when it caches); `cancel` closes the upstream connection at
once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxy.core.call import Answer, Call, repro_headers
from proxy.core.entry import request_id_of
from proxy.core.policy import StreamDisconnect
from proxy.core.sse import StreamRecorder
from proxy.errors import UpstreamError, UpstreamUnreachable
from proxy.server.caching import as_upstream_allows, call_upstream, unrelayed
from proxy.server.context import Services
from proxy.server.recording import observe_fingerprint, record
from proxy.server.unframed import Unframed
from proxy.upstream.client import UpstreamResponse
from proxy.upstream.headers import response_headers, undecoded

log = logging.getLogger("proxy.stream")

CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError)
# Bytes fed to the recorder between two turns of the event loop: some milliseconds of reading
# for the frames that cost it most per byte (a few bytes each).
_SLICE = 16 * 1024
END_GRACE = 1.0
"""Seconds the upstream is given, after its stream's clean end, to end its body (and its
compressed stream): a healthy one does at once, and its connection goes back to the pool; one
that holds it open (silent, or dripping empty deflate blocks, which inflate to nothing) is hung
up on, the answer kept."""


async def forward_stream(
    services: Services, request: web.Request, call: Call
) -> web.StreamResponse:
    upstream = await call_upstream(services, request, call)
    try:
        if upstream.status != 200 or upstream.content_type != "text/event-stream":
            return await unrelayed(services, call, upstream)
        call = as_upstream_allows(services, call, upstream.headers)
        relay = _Relay(services, request, call, upstream)
        response = await relay.run()
    finally:
        upstream.release()
    await relay.finish()
    return response


class _HeadWithFirstFrame(Unframed):
    """Headers held back until the first write, then sent in the same packet as the first
    frame: the client's first token then needs one wakeup, not two. aiohttp's own Response
    buffers its headers the same way (this class attribute); by default a StreamResponse sends
    them at once."""

    _send_headers_immediately = False


class _Relay:
    """One upstream stream copied to one client, recorded on the side."""

    def __init__(
        self, services: Services, request: web.Request, call: Call, upstream: UpstreamResponse
    ) -> None:
        self.services = services
        self.request = request
        self.call = call
        self.upstream = upstream
        self.recorder = StreamRecorder(
            services.settings.max_entry, call.events, services.recordings
        )
        if undecoded(upstream.headers) is not None:
            # Bytes in a coding the proxy does not decode are no frames to read: read as SSE,
            # they held the head back for a frame, or named a fingerprint they do not carry.
            self.recorder.reading = False
        self.source: AsyncIterator[bytes] | None = upstream.chunks()
        self.grace: float | None = None
        self.client_gone = False
        self.cut = False
        self.committed = False
        self.held: list[bytes] = []
        self.keep_reading = call.plan.store and (
            services.settings.stream_disconnect is StreamDisconnect.FINISH
        )
        self.gone_at = 0.0

    async def run(self) -> web.StreamResponse:
        try:
            return await self._run()
        finally:
            self.recorder.release()

    async def _run(self) -> web.StreamResponse:
        chunks = self._chunks()
        try:
            head = [chunk async for chunk in self._until_first_frame(chunks)]
            if self.cut and not self.recorder.frames:
                raise UpstreamUnreachable("The upstream broke its stream before the first event.")
            response = _HeadWithFirstFrame(headers=self._headers())
            await response.prepare(self.request)
            for chunk in head:  # the recorder's own objects: joined, they would be a copy
                await self._pass(response, chunk)
            del head
            async for chunk in chunks:
                await self._pass(response, chunk)
                if self.client_gone and not self._worth_reading():
                    self._hang_up()
                    break
        finally:
            await chunks.aclose()
        await self._pass(response, b"", last=True)
        await self._send_held(response)
        await self._end(response)
        return response

    async def _pass(self, response: web.StreamResponse, chunk: bytes, last: bool = False) -> None:
        """Store a recording that just became complete before its last bytes reach the client.
        An inflated answer's are held while its compressed stream is read on for its end
        (END_GRACE at most, see `_next`): one seen to break by then is never stored, and its
        held bytes go on after all (bounded by the recording's cap, past which it is no longer
        complete). The `last` call, once the reading is over, stores one that did not break:
        its answer ended cleanly, as a plain stream's does, whatever came after."""
        if self.recorder.complete and not self.committed:
            if self.upstream.end_unchecked and not self.cut and not last:
                self.held.append(chunk)
                return
            if not self.cut:
                self.committed = True
                await self._commit()
        if self.held:
            await self._send_held(response)
        if chunk:
            await self._send(response, chunk)

    def _past_the_end(self) -> None:
        """Bytes after a clean end are not passed on: a HIT will not have them (an `error`
        event after `response.completed`, which the SDK reads on to), and the client gets the
        answer as stored, its stream ended cleanly. The upstream connection, not read to its
        end, is closed."""
        log.info("upstream sent on past the stream's end", extra={"key": self.call.key})
        self._hang_up()

    def _hang_up(self) -> None:
        """Done with the upstream before its end: its connection is closed, never pooled."""
        self.source = None
        self.upstream.release()

    async def _next(self) -> bytes | None:
        """The upstream's next chunk, None at its end. Once the answer has ended cleanly, only
        the upstream's own end is awaited (read before the client's stream ends, so that a
        next request finds the connection back in the pool), for END_GRACE at most: one that
        holds its stream open past that is hung up on. Silent, it would hold the client until
        the upstream timeout; dripping empty deflate blocks, each resetting that timeout, for
        ever (and an SDK reading a stream to its end, a Responses one, with it)."""
        if self.source is None:
            return None
        if not self.recorder.answered:
            return await anext(self.source, None)
        if self.grace is None:
            self.grace = asyncio.get_running_loop().time() + END_GRACE
        try:
            async with asyncio.timeout_at(self.grace):
                return await anext(self.source, None)
        except TimeoutError:
            log.info("upstream held its stream open past its end", extra={"key": self.call.key})
            self._hang_up()
            return None

    async def _send_held(self, response: web.StreamResponse) -> None:
        held, self.held = self.held, []
        for chunk in held:
            await self._send(response, chunk)

    def _worth_reading(self) -> bool:
        """Read on for a client that left only while the recording may still be stored, and
        for at most --upstream-timeout after it left: a stream nobody reads is a whole answer,
        so an upstream sending a frame a second forever (or on past its end) cannot pin the
        connection and the recorder."""
        recorder = self.recorder
        stored = self.keep_reading and recorder.reading and not self.committed
        if not stored or recorder.oversize or recorder.failed:
            return False
        limit = self.services.settings.upstream_timeout
        return not limit or asyncio.get_running_loop().time() - self.gone_at < limit

    def _headers(self) -> CIMultiDict[str]:
        """The upstream's end-to-end headers, repeated ones too (Set-Cookie), and ours."""
        headers = response_headers(self.upstream.headers, decoded=True)
        headers.update(repro_headers(self.call, self.call.plan.outcome, self._fingerprint()))
        return headers

    def _fingerprint(self) -> str:
        return self.recorder.fingerprint or "none"

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        """The upstream's bytes as they come, fed to the recorder, up to the stream's clean end
        (the recorder takes nothing past it, see `_past_the_end`), then nothing but the
        upstream's own end, for a moment at most (see `_next`). A chunk is fed in slices
        of at most _SLICE bytes, the event loop let run every _SLICE bytes read: a MiB of tiny
        frames read at once (or inflated from a few KiB) held it for a second, every other
        client waiting. Until a frame names the answer, a slice is cut after the frame that
        named it: an answer that arrives all at once then reaches the client's first token
        without waiting for the recorder to read the rest."""
        recorder = self.recorder
        unyielded = 0  # bytes read since the loop last ran (an inflated body's pieces come at once)
        try:
            while (chunk := await self._next()) is not None:
                at = 0
                while at < len(chunk) and not recorder.at_end:
                    if unyielded >= _SLICE:
                        unyielded = 0
                        await asyncio.sleep(0)
                    piece = chunk[at : at + _SLICE] if at or len(chunk) > _SLICE else chunk
                    taken = recorder.feed(piece, until_named=_before_head(recorder))
                    at += len(taken)
                    unyielded += len(taken)
                    if taken:  # none: the LF the end's CR might have had did not come
                        yield taken
                if at < len(chunk):
                    self._past_the_end()
                    return
        except UpstreamError as exc:
            self.cut = True
            log.warning(
                "upstream stream broke", extra={"key": self.call.key, "error": type(exc).__name__}
            )

    async def _send(self, response: web.StreamResponse, chunk: bytes) -> None:
        if self.client_gone:
            return
        try:
            await response.write(chunk)
        except CLIENT_GONE:
            self._left()

    def _left(self) -> None:
        self.client_gone = True
        self.gone_at = asyncio.get_running_loop().time()
        log.info("client left mid-stream", extra={"key": self.call.key})

    async def _until_first_frame(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The chunks up to the first frame that names the answer (`StreamRecorder.named`), or
        up to the cap's worth without one: an upstream sending comments (`: ping`) and no event
        for ever would otherwise make these chunks grow without bound, and the client wait for
        its head. Or until the client is seen gone: nothing written to it yet, its leaving shows
        nowhere else, and such an upstream held the request, its connection's slot under
        --max-connections and an upstream connection for as long as it kept pinging, not the
        --upstream-timeout a client that left mid-stream is read on for (`_worth_reading`)."""
        async for chunk in chunks:
            yield chunk
            if not _before_head(self.recorder):
                return
            if self.request.transport is None:
                self._left()
                return

    async def _end(self, response: web.StreamResponse) -> None:
        if self.client_gone:
            return
        if self.cut and not self.committed and self.request.transport is not None:
            # The client must see a broken stream, as it would from the upstream itself.
            self.request.transport.close()
            return
        try:
            await response.write_eof()
        except CLIENT_GONE:
            self.client_gone = True

    async def finish(self) -> None:
        """Vouch for the caller's credentials if the stream was an answer to its end (one
        that opened with a 200 and then reported an error, as gateways report a bad key,
        answered nobody); learn the fingerprint of a stream cut short (a clean one taught
        it), never of one that carried an error or named two fingerprints: as an error answer
        never does, it would make a model rotate, and its stored answers stop being served
        (see `StreamRecorder.taught`)."""
        recorder = self.recorder
        if recorder.answered or self.committed:
            self.services.keys.remember(self.call)
        if not self.committed and recorder.taught is not None:
            await observe_fingerprint(self.services, self.call.lineage, recorder.taught)

    async def _commit(self) -> None:
        """Learn the fingerprint, then store: under `follow` the entry is servable at once."""
        recorder = self.recorder
        answer = Answer(
            body=recorder.body(),
            content_type="text/event-stream",
            fingerprint=self._fingerprint(),
            prompt_tokens=recorder.prompt_tokens,
            completion_tokens=recorder.completion_tokens,
            stream=True,
            response_id=recorder.response_id,
            entitled=recorder.entitled,
            request_id=request_id_of(self.upstream.headers),
        )
        await record(self.services, self.call, answer)


def _before_head(recorder: StreamRecorder) -> bool:
    return recorder.reading and not recorder.named and not recorder.oversize
