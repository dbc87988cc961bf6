"""Recording a server-sent-event stream on the side while it passes through.

The recorder keeps the exact bytes for replay and reads just enough of each frame to know the
fingerprint, the usage and whether the stream ended cleanly, and nothing went over the size cap.
Only such a stream is ever stored. A clean end depends on the route: chat and text completions
end with a finish_reason, then `[DONE]`, and no error event; the Responses API's typed events
end with `response.completed`, and a `response.failed`, `response.incomplete` or `error` event
spoils the stream, whatever follows. So does a frame whose `event:` name says something else
than its data: clients that dispatch on the name (an EventSource's `error` listener) and this
recorder, which reads the data, would disagree on what was answered, and an `event: error`
above data that reads as a token would be stored and replayed as a clean answer.

A stream over the cap drops its bytes but is still read, so its fingerprint reaches the response
headers and the fingerprint tracking like any other answer's; only a single frame larger than
the cap stops the reading. The frame not yet ended is kept as the chunks it came in, the same
objects the recording holds, never a copy of them: however the upstream frames its stream
(one frame that never ends, say), the recorder holds at most the cap and the chunk that crossed
it, and joins a frame's bytes only once it has ended, to read it.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.core.entry import fingerprint_of, usage_of

_DONE = b"[DONE]"
_ENDS = (b"\n\n", b"\n\r\n")  # a blank line, whatever ends the line before it
_COMPLETED = "response.completed"
_SPOILED = frozenset({"response.failed", "response.incomplete", "error"})


def _value(field: bytes) -> bytes:
    """A field's value as the SSE specification reads it: one leading space dropped."""
    return field[1:] if field.startswith(b" ") else field


class StreamRecorder:
    def __init__(self, max_bytes: int, responses: bool = False) -> None:
        """`responses`: the stream is the Responses API's typed events."""
        self._max_bytes = max_bytes
        self._responses = responses
        self.response_id: str | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.frames = 0
        self.fingerprint: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finished = False
        self.done = False
        self.failed = False
        self.oversize = False
        self.reading = True

    def feed(self, data: bytes) -> None:
        """Take the next bytes as they came from the upstream."""
        self._size += len(data)
        if self._size > self._max_bytes:
            self.oversize = True
            self._chunks.clear()
        else:
            self._chunks.append(data)
        if self.reading and data:
            self._split(data)

    def _split(self, data: bytes) -> None:
        """Read the frames `data` ends. Only the new bytes (and the two before them) can hold
        a new frame end, and only the frames ended are joined: a frame sent in many pieces
        costs its length once, not once per piece."""
        before = self._last_two()
        probe = before + data if before else data
        found = [at + len(sep) for sep in _ENDS if (at := probe.rfind(sep)) >= 0]
        if not found:
            self._hold(data)
            return
        end = max(found) - len(before)
        ended = b"".join([*self._pending, data[:end]]) if self._pending else data[:end]
        self._pending, self._pending_size = [], 0
        if end < len(data):
            self._hold(data[end:])
        for frame in ended.replace(b"\r\n", b"\n").split(b"\n\n")[:-1]:
            self._read_frame(frame)

    def _hold(self, data: bytes) -> None:
        """Keep the start of a frame not yet ended; one larger than the cap stops the reading."""
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > self._max_bytes:
            self.reading, self._pending = False, []

    def _last_two(self) -> bytes:
        """The last two bytes of the frame not yet ended: a frame end may begin in them."""
        if not self._pending:
            return b""
        last = self._pending[-1]
        if len(last) >= 2 or len(self._pending) == 1:
            return last[-2:]
        return self._pending[-2][-1:] + last

    def _read_frame(self, frame: bytes) -> None:
        lines = frame.split(b"\n")
        payload = b"\n".join(line[5:].lstrip(b" ") for line in lines if line.startswith(b"data:"))
        names = [_value(line[6:]) for line in lines if line.startswith(b"event:")]
        if not payload:
            self.failed = self.failed or bool(names)  # a named event with no data to read
            return
        self.frames += 1
        if len(names) > 1 or (names and not self._responses and names != [b"message"]):
            self.failed = True  # a chat frame may be named `message` only, and only once
            return
        if payload.strip() == _DONE:
            self.done = not self._responses
            return
        try:
            event: Any = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.failed = True
            return
        if not isinstance(event, dict) or "error" in event:
            self.failed = True
            return
        if names and self._responses and names[0] != str(event.get("type")).encode():
            self.failed = True  # a typed frame may be named by its own type only
            return
        if self._responses:
            self._read_typed(event)
        else:
            self._read_event(event)

    def _read_typed(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in _SPOILED:
            self.failed = True
            return
        response = event.get("response")
        if not isinstance(response, dict):
            return
        if self.fingerprint is None:
            self._read_fingerprint(event, response)
        if isinstance(response.get("id"), str):
            self.response_id = response["id"]
        if kind == _COMPLETED:
            self.prompt_tokens, self.completion_tokens = usage_of(response)
            self.finished = self.done = response.get("status", "completed") == "completed"

    def _read_fingerprint(self, event: dict[str, Any], response: dict[str, Any]) -> None:
        for holder in (event, response):
            if "system_fingerprint" in holder:
                self.fingerprint = fingerprint_of(holder)
                return

    def _read_event(self, event: dict[str, Any]) -> None:
        if "system_fingerprint" in event:
            self._read_chunk_fingerprint(fingerprint_of(event))
        if isinstance(event.get("usage"), dict):
            self.prompt_tokens, self.completion_tokens = usage_of(event)
        for choice in event.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finished = True

    def _read_chunk_fingerprint(self, fingerprint: str) -> None:
        """The first chunk's fingerprint names the stream; one chunk naming another (a
        hostile upstream, or two backends answering one stream) spoils it: stored, it would
        be served as the first fingerprint's answer though another produced part of it. A
        chunk naming none is no contradiction."""
        if self.fingerprint is None:
            self.fingerprint = fingerprint
        elif fingerprint != self.fingerprint and "none" not in (fingerprint, self.fingerprint):
            self.failed = True

    @property
    def answered(self) -> bool:
        """An answer to its clean end, whatever its size: finish_reason, then [DONE] (or
        `response.completed`), and no error."""
        return self.finished and self.done and not self.failed

    @property
    def complete(self) -> bool:
        """A clean end within the cap: what may be stored."""
        return self.answered and not self.oversize

    def body(self) -> bytes:
        return b"".join(self._chunks)
