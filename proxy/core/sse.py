"""Recording a server-sent-event stream on the side while it passes through.

The recorder keeps the exact bytes for replay and reads just enough of each frame to know the
fingerprint, the usage and whether the stream ended cleanly, and nothing went over the size cap.
Only such a stream is ever stored. A clean end depends on the route: chat and text completions
end with a finish_reason, then `[DONE]`, and no error event; the Responses API's typed events
end with `response.completed`, and a `response.failed`, `response.incomplete` or `error` event
spoils the stream, whatever follows. A streamed transcript ends with `transcript.text.done`
holding its text, speech sent as events with `speech.audio.done`, a streamed image with its
`completed` event holding the image; an `error` event spoils any of them. So does a frame whose
`event:` name says something else than its data: clients that dispatch on the name (an
EventSource's `error` listener) and this recorder, which reads the data, would disagree on what
was answered, and an `event: error` above data that reads as a token would be stored and
replayed as a clean answer. A stream whose requested moderation failed
(`entry.moderation_failed`, in a chat chunk or the completed response) is an answer, relayed and
teaching its fingerprint, but not stored.

Lines are read as the SSE specification and the official SDK read them: a line ends with CRLF,
LF or CR alone, a field's value loses one leading space. Whatever the SDK would fail on is no
clean end either (an event it dispatches without data, a line that is not UTF-8, `[DONE]`
before a Responses stream completed, a byte-order mark the SDK and an EventSource read
differently): stored, it would be replayed as an answer though every reader fails on it.

A stream over the cap drops its bytes but is still read, so its fingerprint reaches the response
headers and the fingerprint tracking like any other answer's; only a single frame larger than
the cap stops the reading. The frame not yet ended is kept as the chunks it came in, the same
objects the recording holds, never a copy of them (but for pieces of a few bytes, which both
gather in a buffer, an object per few bytes costing more than the bytes): however the upstream
frames or paces its stream (one frame that never ends, three bytes at a time), the recorder
holds about the cap and the chunk that crossed it, and joins a frame's bytes only once it has
ended, to read it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from proxy.core import routes
from proxy.core.budget import Budget
from proxy.core.entry import (
    fingerprint_of,
    is_answer,
    is_objects,
    moderation_failed,
    rewritten,
    usage_of,
)
from proxy.core.owned import entitled
from proxy.core.pieces import Pieces
from proxy.core.sse_wire import is_text, last_end, lines, past_blank
from proxy.core.sse_wire import value as field_value
from proxy.core.weight import CONTAINERS_ON_LOOP, containers

_DONE = b"[DONE]"
_BOM = b"\xef\xbb\xbf"
RESPONSE_DONE = "response.completed"
TRANSCRIPT_DONE = "transcript.text.done"
_SPOILED = frozenset({"response.failed", "response.incomplete", "error"})
_ENDINGS = {
    routes.RESPONSES: RESPONSE_DONE,
    routes.TRANSCRIPTIONS: TRANSCRIPT_DONE,
    routes.TRANSLATIONS: TRANSCRIPT_DONE,
    routes.SPEECH: "speech.audio.done",
    routes.IMAGES: "image_generation.completed",
    routes.IMAGE_EDITS: "image_edit.completed",
}
"""The event that ends each typed stream: the Responses API's, a streamed transcript's, speech
asked for as events, one streamed image's (a stream of several is read as no typed stream,
`routes.events_of`). Other routes stream chat chunks, read by their choices."""
IMAGES_DONE = frozenset(_ENDINGS[kind] for kind in routes.IMAGE_STREAMS)
_HOLDS = {TRANSCRIPT_DONE: "text", **dict.fromkeys(IMAGES_DONE, "b64_json")}
"""What an ending event must hold as a string to end an answer, as the SDK's event types
require it: a transcript's whole text, an image's bytes."""
_MAX_CHOICES = 128  # the API's bound on `n`


class _Event:
    """The fields of the event being read: its data lines joined, its `event:` name."""

    __slots__ = ("data", "name", "names", "retry")

    def __init__(self) -> None:
        self.data: bytes | bytearray | None = None
        self.name: bytes | None = None
        self.names = 0
        self.retry = False

    def add(self, value: bytes) -> None:
        """One more data line: the first kept as it is, more joined in one buffer."""
        if self.data is None:
            self.data = value
            return
        if isinstance(self.data, bytes):
            self.data = bytearray(self.data)
        self.data += b"\n"
        self.data += value


def _carries_token(choice: dict[str, Any]) -> bool:
    """A choice carrying anything a client shows or acts on: text, a delta beyond the role
    (content, a refusal, a tool call), log probabilities or a finish_reason."""
    delta = choice.get("delta")
    fields = delta.items() if isinstance(delta, dict) else ()
    return bool(
        choice.get("text")
        or choice.get("logprobs")
        or choice.get("finish_reason")
        or any(value for name, value in fields if name != "role")
    )


class StreamRecorder:
    def __init__(
        self, max_bytes: int, kind: str = routes.CHAT, budget: Budget | None = None
    ) -> None:
        """`kind`: the route the stream answers (`routes.kind`), which says how its events read:
        chat chunks, or typed events and the one that ends them (`_ENDINGS`). `budget`: what
        the recordings in flight hold together (proxy.core.budget); its holder `release`s
        this one once done with it."""
        self._max_bytes = max_bytes
        self._budget = Budget(max_bytes) if budget is None else budget
        self._ending = _ENDINGS.get(kind)
        self._typed = self._ending is not None
        self._holds = _HOLDS.get(self._ending or "")
        self._responses = kind == routes.RESPONSES
        self.response_id: str | None = None
        self._named_id: str | None = None  # the id the response's events name, kept or not
        self.entitled = False  # a response event named an access program (`owned.entitled`)
        self._chunks = Pieces()
        self._pending = Pieces()
        self._after_cr = False  # the last frame read ended with a CR: an LF next ends that line
        self._started = False
        self._named_by_id = False  # the SDK dispatches every blank line after an `id:` field
        self._open: set[int] = set()
        self._ended: set[int] = set()
        self.frames = 0
        self.fingerprint: str | None = None
        self._claim: str | bytes | None = None
        self.token = False  # a chat chunk carried more than its role: text, a tool call, an end
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finished = False
        self.done = False
        self.failed = False
        self.unmoderated = False  # the moderation asked for failed: an answer, not stored
        self.oversize = False
        self.reading = True
        self._over = False  # the stream ended cleanly: nothing after that is taken

    def feed(self, data: bytes, until_named: bool = False) -> bytes:
        """Take the next bytes as they came from the upstream, up to the frame that ended the
        stream cleanly (`answered`): what follows is no part of the answer, neither read nor
        recorded, so that the relay passes on what a HIT replays. `until_named`: stop as well
        after the frame that names the answer (see `named`), for the relay to send its head
        then. The bytes taken, `data` itself when all were: the rest is for the next call."""
        if self._over:  # only the LF of the CRLF that ended the stream, if it came apart
            data = b"\n" if self._after_cr and data.startswith(b"\n") else b""
            self._after_cr = False
        elif self.reading and data:
            taken = self._split(data, until_named)
            data = data[:taken] if taken < len(data) else data
        if self.oversize:
            pass
        elif self._chunks.size + len(data) > self._max_bytes or not self._budget.take(len(data)):
            self.oversize = True
            self.release()
        else:
            self._chunks.append(data)
        return data

    def release(self) -> None:
        """Drop the recording and give its bytes back to the budget: once it is stored, or
        can no longer be."""
        self._budget.give(self._chunks.size)
        self._chunks = Pieces()

    def _split(self, data: bytes, until_named: bool) -> int:
        """Read the frames `data` ends; how much of `data` was taken (see `feed`). Only the new
        bytes (and the one before them) can hold a new frame end, and only the frames ended
        are joined: a frame sent in many pieces costs its length once, not once per piece."""
        pending = self._pending
        before = pending.last_byte() if pending.size else b""
        found = last_end(before + data if before else data)
        if found < 0:
            self._hold(data)
            return len(data)
        end = found - len(before)
        held = pending.size
        if held:
            ended = pending.joined(data[:end])
            self._pending = Pieces()
        else:
            ended = data[:end] if end < len(data) else data
        stop = self._read_frames(ended, until_named)
        if stop is not None:
            taken = stop - held  # past a blank line, never one within the frame held before
            # A line end's LF may come next only if no byte came after its CR yet.
            self._after_cr = self._after_cr and taken == len(data)
            return taken
        if end < len(data):
            self._hold(data[end:])
        return len(data)

    def _hold(self, data: bytes) -> None:
        """Keep the start of a frame not yet ended; one larger than the cap stops the reading."""
        self._pending.append(data)
        if self._pending.size > self._max_bytes:
            self.reading, self._pending = False, Pieces()

    def _read_frames(self, ended: bytes, until_named: bool) -> int | None:
        """Read lines as the SDK's decoder does, dispatching an event at each blank line; where
        the reading stopped (see `feed`), if it did. One line at a time, and the data of an
        event in one buffer: a frame of a million short lines cost an object per line, many
        times the frame's own size."""
        at = 1 if self._after_cr and ended.startswith(b"\n") else 0  # a CRLF's LF
        self._after_cr = ended.endswith(b"\r")
        if not self._started:
            self._started = True
            self.failed = self.failed or ended.startswith(_BOM)
        event = _Event()
        blanks = 0
        for line in lines(ended, at):
            if not line:
                blanks += 1
                if event.data is not None or event.names or event.retry or self._named_by_id:
                    self._read_frame(event)
                    event = _Event()
                    if not (self.done or until_named):  # the end not yet read, no head awaited
                        continue
                    self._over = self.answered
                    if self._over or (until_named and self.named):
                        stop = past_blank(ended, at, blanks)
                        self._after_cr = ended[stop - 1] == 13
                        return stop
            elif line.startswith(b":"):
                self.failed = self.failed or not is_text(line)
            else:
                self._read_field(event, line)
        return None

    def _read_field(self, event: _Event, line: bytes) -> None:
        name, _, value = line.partition(b":")
        value = field_value(value)
        if name == b"data":
            event.add(value)
        elif not is_text(line):
            self.failed = True
        elif name == b"event":
            event.name, event.names = value, event.names + 1
        elif name == b"id" and value:
            self._named_by_id = True
        elif name == b"retry":
            event.retry = True

    def _read_frame(self, event: _Event) -> None:
        payload = event.data
        if payload is None:
            self.failed = True  # dispatched without data: the SDK fails to parse it
            return
        self.frames += 1
        name = event.name
        if event.names > 1 or (name is not None and not self._typed and name != b"message"):
            self.failed = True  # a chat frame may be named `message` only, and only once
            return
        if payload.startswith(_DONE):  # where the SDK stops reading: after the answer only
            self.done = self.done or not self._typed
            self.failed = self.failed or not self.finished or payload.rstrip() != _DONE
            return
        if containers(payload) > CONTAINERS_ON_LOOP:
            self.failed = True  # relayed, never parsed here: it would hold the loop (weight)
            return
        try:
            parsed: Any = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.failed = True
            return
        if not isinstance(parsed, dict) or "error" in parsed:
            self.failed = True
            return
        if self._typed and not isinstance(parsed.get("type"), str):
            self.failed = True  # what no SDK dispatches on: and unhashable, no name to look up
            return
        if name is not None and self._typed and name != parsed["type"].encode():
            self.failed = True  # a typed frame may be named by its own type only
            return
        if self._responses:
            self._read_typed(parsed)
        elif self._typed:
            self._read_media(parsed)
        else:
            self._read_event(parsed)

    def _read_typed(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in _SPOILED:
            self.failed = True
            return
        response = event.get("response")
        for holder in (event, response):
            if isinstance(holder, dict):
                self._read_claim(holder)
        if not isinstance(response, dict):
            return
        self.entitled = self.entitled or entitled(response)
        if isinstance(response.get("id"), str):
            if self._named_id not in (None, response["id"]):
                # One response's events all name it; the SDK takes the id from the first, and
                # the index would have filed the answer under the last.
                self.failed = True
                return
            self._named_id = response["id"]
            # Nor is a response made with `store: false` found by its id: the upstream never
            # kept it (the rule `responses.id_of` reads in a whole answer).
            kept = response.get("store") is not False
            self.response_id = response["id"] if kept else None
        if kind == RESPONSE_DONE:
            self.prompt_tokens, self.completion_tokens = usage_of(response)
            self.unmoderated = self.unmoderated or moderation_failed(response)
            # A stored stream answers as its whole form would: by the same rule (see is_answer).
            self.finished = self.done = is_answer(response, responses=True)

    def _read_media(self, event: dict[str, Any]) -> None:
        """A typed event of a transcript or of speech: it names no fingerprint (these routes
        have none, as their whole answers do not); its ending event carries the usage, and a
        transcript's its whole text."""
        kind = event.get("type")
        if kind in _SPOILED:
            self.failed = True
        elif kind == self._ending:
            self.prompt_tokens, self.completion_tokens = usage_of(event)
            held = self._holds
            self.finished = self.done = held is None or isinstance(event.get(held), str)

    def _read_event(self, event: dict[str, Any]) -> None:
        self._read_claim(event)
        self.unmoderated = self.unmoderated or moderation_failed(event)
        if isinstance(event.get("usage"), dict):
            self.prompt_tokens, self.completion_tokens = usage_of(event)
        choices = event.get("choices")
        if not is_objects(choices):
            self.failed = True  # every chunk carries its list of choices, as the SDK reads it
            return
        for choice in choices:
            self._read_choice(choice)
        self.finished = bool(self._ended) and not self._open

    def _read_choice(self, choice: dict[str, Any]) -> None:
        """Every choice the stream opened must have finished: with `n` above 1, one cut short
        beside another that finished is no more an answer than a stream with no finish. No
        request asks for more than _MAX_CHOICES; a stream naming more is refused, not tracked."""
        if not self.token:
            self.token = _carries_token(choice)
        index = choice.get("index", 0)
        if not isinstance(index, int):
            self.failed = True
        if self.failed or index in self._ended:
            return
        if choice.get("finish_reason"):
            self._open.discard(index)
            self._ended.add(index)
        else:
            self._open.add(index)
        if len(self._open) + len(self._ended) > _MAX_CHOICES:
            self.failed = True
            self._open.clear()
            self._ended.clear()

    def _read_claim(self, holder: dict[str, Any]) -> None:
        """The first chunk or event that names a fingerprint names the stream, whether or not
        chunks before it carried a null one (OpenAI's sometimes do): a null or missing one
        claims nothing. One naming another value (a hostile upstream, or two backends
        answering one stream) spoils it: stored, it would be served as the first one's answer
        though another produced part of it. An ill-formed value is a claim too, labelled
        `none`: it names something, and not the stream's fingerprint (kept as a digest, as one
        can be as long as a frame)."""
        value = holder.get("system_fingerprint")
        if value is None or value == self._claim:  # a digest, bytes, equals no parsed value
            return
        fingerprint = fingerprint_of(holder)
        written = b"" if fingerprint != "none" else rewritten(value)
        if written is None:  # too deep to tell from another claim: the stream names nothing
            self.failed = True
            return
        claim = fingerprint if fingerprint != "none" else hashlib.sha256(written).digest()
        if self._claim is None:
            self._claim = claim
            self.fingerprint = fingerprint
        elif claim != self._claim:
            self.failed = True

    @property
    def named(self) -> bool:
        """A frame read names the answer for its head: a fingerprint, or a chat chunk carrying
        a token (Azure's first chunk, of prompt filter results, carries neither; OpenAI's first,
        of the role alone, may name a null fingerprint the next one names), or any typed
        event. A frame that spoiled the stream ends the wait too."""
        if self.fingerprint is not None:
            return True
        return self.frames > 0 and (self._typed or self.failed or self.token)

    @property
    def at_end(self) -> bool:
        """Past the stream's clean end: `feed` takes nothing more."""
        return self._over and not self._after_cr

    @property
    def answered(self) -> bool:
        """An answer to its clean end, whatever its size: finish_reason, then [DONE] (or
        `response.completed`), and no error."""
        return self.finished and self.done and not self.failed

    @property
    def taught(self) -> str | None:
        """The fingerprint the stream teaches the model's tracking: the one it named, or `none`
        for an answer that named none to its clean end. Nothing from a stream that spoiled
        itself (an error, two fingerprints: an error answer never teaches one), nor from one
        cut before it named one, whose next chunk might have."""
        if self.failed:
            return None
        if self.fingerprint is None and self.answered:
            return "none"
        return self.fingerprint

    @property
    def complete(self) -> bool:
        """A clean end within the cap, with the moderation asked for (`moderation_failed`):
        what may be stored."""
        return self.answered and not self.oversize and not self.unmoderated

    def body(self) -> bytes:
        return self._chunks.joined()
