"""A seeded fuzz of the proxy against a hostile upstream: every case is one request whose answer
is drawn from `random.Random(SEED)` (a valid chat, completions, embeddings or Responses answer,
whole or streamed, then mangled: fields dropped or of the wrong type, bodies cut or mislabelled,
codings corrupt, odd statuses and headers, SSE framed every wrong way), served by a raw-bytes
upstream (tests/hostile.py) to a real proxy process, asked by a raw aiohttp client.

Per case: the proxy answers within a bound, never with an error of its own making at 500, and
with either the upstream's answer as sent or an OpenAI-shaped error; whatever it serves from
the cache afterwards (`only-if-cached`, then a repeat once the upstream has turned sane) is the
first answer exactly, and an answer. Over the run: no traceback or error line in its log, no
fingerprint learned that is not one, /healthz still 200, RSS grown by a bounded amount. The
hand-written attacks (test_upstream_attacks.py, test_stream_attacks.py and others) pin each
known hole; this looks for the classes of hole they did not think of."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import random
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
import zstandard

from bench.procs import rss_kib, stop
from tests.fixtures_procs import Proxy, launch_proxy, raw_exchange, wait_up
from tests.fixtures_redis import RedisServer
from tests.hostile import Received, Scripted

SEED = 20261205
CASES = 600
TOKEN = "fuzz-admin-token-0123456789"
AUTH = {"Authorization": "Bearer sk-fuzz", "Content-Type": "application/json"}
ANSWER_BOUND = 15.0  # seconds a case's answer may take (the upstream timeout is 1)
RSS_GROWTH_BOUND_KIB = 96 * 1024
MAX_ENTRY = 1 << 20  # the proxy's --max-entry
PASSING = "batches"  # a pass-through route: its answers are relayed, never cached
PIECE_PAUSE = 0.002
_FINGERPRINT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+=/-]{0,127}")
SANE_FP = "fp_sane"


# --- what the upstream answers ----------------------------------------------------------------


def dumps(value: object) -> bytes:
    """JSON as an upstream may write it: integers of any size, any unicode unescaped."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Case:
    """One request and the bytes the upstream answers it with."""

    number: int
    route: str  # chat, completions, embeddings, responses
    stream: bool
    raw: bytes  # the whole HTTP answer, head and body, as written
    close: bool  # the upstream closes the connection after writing it
    status: int
    body: bytes  # the body as sent (before the framing)
    decoded: bytes | None  # what a faithful relay delivers; None: no faithful reading exists
    coding: str = ""  # Content-Encoding sent, "" for none
    wire: bytes = b""  # the body under its coding, before the framing
    stall: bool = False  # the upstream goes silent after writing `raw`, the connection open
    cuts: tuple[int, ...] = ()  # where `raw` is cut into pieces written apart
    storable: bool = True  # False: a faithful answer, but one the proxy must not store
    mode: str = "miss"
    """miss; refresh (over a sane entry, with no-cache); concurrent (3 at once); leave (the
    client goes after its first bytes: the proxy reads on, and may store the stream)"""
    what: list[str] = field(default_factory=list)

    def request(self) -> tuple[str, bytes]:
        content = f"fuzz case {self.number}"
        if self.route == "chat":
            body: dict[str, Any] = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": content}],
            }
        elif self.route == "completions":
            body = {"model": "gpt-3.5-turbo-instruct", "prompt": content}
        elif self.route == "embeddings":
            body = {"model": "text-embedding-3-small", "input": content}
        elif self.route == PASSING:  # a pass-through route, never cached
            body = {"input_file_id": content, "endpoint": "/v1/chat/completions"}
        else:
            body = {"model": "gpt-4o-mini", "input": content}
        if self.stream:
            body["stream"] = True
        path = {"chat": "chat/completions"}.get(self.route, self.route)
        return path, orjson.dumps(body)


def whole_answer(route: str, fingerprint: object, text: str = "hello") -> dict[str, Any]:
    if route == "chat":
        return {
            "id": "chatcmpl-fuzz",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "system_fingerprint": fingerprint,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    if route == "completions":
        return {
            "id": "cmpl-fuzz",
            "object": "text_completion",
            "created": 1,
            "model": "gpt-3.5-turbo-instruct",
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    if route == "embeddings":
        return {
            "object": "list",
            "model": "text-embedding-3-small",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2, 0.3]}],
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        }
    return {
        "id": "resp_fuzz0001",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "error": None,
        "model": "gpt-4o-mini",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
    }


def chat_chunks(route: str, fingerprint: object, text: str = "hello") -> list[dict[str, Any]]:
    if route == "completions":
        base = {"id": "cmpl-fuzz", "object": "text_completion", "created": 1}
        base |= {"model": "gpt-3.5-turbo-instruct", "system_fingerprint": fingerprint}
        return [
            base | {"choices": [{"index": 0, "text": part, "finish_reason": None}]}
            for part in (text[:2], text[2:])
        ] + [base | {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}]
    base = {"id": "chatcmpl-fuzz", "object": "chat.completion.chunk", "created": 1}
    base |= {"model": "gpt-4o-mini", "system_fingerprint": fingerprint}
    return [
        base | {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
        *(
            base | {"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
            for p in (text[:2], text[2:])
        ),
        base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        base | {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    ]


def response_events(text: str = "hello") -> list[dict[str, Any]]:
    done = whole_answer("responses", None, text)
    started = done | {"status": "in_progress", "output": []}
    return [
        {"type": "response.created", "sequence_number": 0, "response": started},
        {"type": "response.output_text.delta", "sequence_number": 1, "delta": text[:2]},
        {"type": "response.output_text.delta", "sequence_number": 2, "delta": text[2:]},
        {"type": "response.completed", "sequence_number": 3, "response": done},
    ]


ODD_FINGERPRINTS: list[object] = [
    123,
    12.5,
    [],
    ["fp_a"],
    {"fp": 1},
    True,
    "",
    "x" * 5000,
    "fp\x00null",
    "fp\nline",
    "fp\x1b[31m",
    "fp_ünicode",
    "fp\u202eevil",
    " fp_space",
    "fp_" + "a" * 200,
]
GOOD_FINGERPRINTS = ["fp_good1", "fp_good2", None]
ODD_USAGE: list[object] = [
    -1,
    "12",
    1.5,
    [],
    None,
    {"prompt_tokens": -5, "completion_tokens": -7},
    {"prompt_tokens": 2**80, "completion_tokens": 2**64},
    {"prompt_tokens": "3", "completion_tokens": [1]},
    {"prompt_tokens": 1.5, "completion_tokens": 1e308},
    {"prompt_tokens": True, "completion_tokens": None},
    {"input_tokens": -1, "output_tokens": 2**70},
]
ODD_VALUES: list[object] = [None, 0, -1, 2**70, 1.5, "", "x", [], {}, [1], [None], True]


def mutate_object(rng: random.Random, answer: dict[str, Any], what: list[str]) -> dict[str, Any]:
    """Drop a field, give one a wrong type, or dress up the fingerprint or the usage."""
    answer = dict(answer)
    for _ in range(rng.randint(1, 3)):
        choice = rng.randrange(7)
        if choice == 0 and answer:
            name = rng.choice(sorted(answer))
            del answer[name]
            what.append(f"drop {name}")
        elif choice == 1:
            answer["system_fingerprint"] = fp = rng.choice(ODD_FINGERPRINTS)
            what.append(f"fingerprint {fp!r:.40}")
        elif choice == 2:
            answer["usage"] = usage = rng.choice(ODD_USAGE)
            what.append(f"usage {usage!r:.40}")
        elif choice == 3:
            name = rng.choice(sorted(answer) or ["choices"])
            answer[name] = value = rng.choice(ODD_VALUES)
            what.append(f"{name} = {value!r:.20}")
        elif choice == 4:
            answer["error"] = rng.choice(
                [{"message": "boom", "type": "server_error"}, "boom", None, 5]
            )
            what.append("error beside")
        elif choice == 5:
            for name in ("choices", "data", "output"):
                if name in answer:
                    answer[name] = value = rng.choice(ODD_VALUES)
                    what.append(f"{name} = {value!r:.20}")
        else:
            answer["model"] = value = rng.choice([5, None, [], "m\x00odel", "é" * 300])
            what.append(f"model {value!r:.20}")
    return answer


def whole_body(rng: random.Random, route: str, what: list[str]) -> bytes:
    fingerprint = rng.choice(GOOD_FINGERPRINTS)
    answer = whole_answer(route, fingerprint)
    if rng.random() < 0.7:
        answer = mutate_object(rng, answer, what)
    body = dumps(answer)
    roll = rng.random()
    if roll < 0.08:
        what.append("not an object")
        return rng.choice([b"[]", b"null", b"42", b'"answer"', b"[" + body + b"]"])
    if roll < 0.12:
        what.append("NaN inside")
        return body.replace(b'"created":1', b'"created":NaN')
    if roll < 0.16:
        what.append("duplicate keys")
        return body[:-1] + b',"choices":"dup","system_fingerprint":"fp_dup"}'
    if roll < 0.2:
        what.append("invalid utf-8")
        return body.replace(b"hello", b"hel\xff\xfelo")
    if roll < 0.23:
        what.append("bom")
        return b"\xef\xbb\xbf" + body
    return body


def frame(rng: random.Random, payload: bytes, what: list[str], event: str | None = None) -> bytes:
    """One SSE frame, framed right or one of the wrong ways."""
    ending = b"\n"
    roll = rng.random()
    if roll < 0.04:
        ending = b"\r"
        what.append("CR endings")
    elif roll < 0.08:
        ending = b"\r\n"
        what.append("CRLF endings")
    head = b"event: " + event.encode() + ending if event else b""
    if rng.random() < 0.04:
        what.append("no data: prefix")
        return head + payload + ending + ending
    if rng.random() < 0.03:
        what.append("mixed endings")
        return head + b"data: " + payload + b"\r\n\n"
    if rng.random() < 0.03:
        what.append("data split over lines")
        half = len(payload) // 2
        return head + b"data: " + payload[:half] + ending + b"data: " + payload[half:] + 2 * ending
    return head + b"data: " + payload + 2 * ending


def stream_body(rng: random.Random, route: str, what: list[str]) -> bytes:
    if route == "responses":
        events: list[tuple[str | None, bytes]] = [
            (e["type"], orjson.dumps(e)) for e in response_events()
        ]
    else:
        fingerprint = rng.choice(GOOD_FINGERPRINTS)
        chunks = chat_chunks(route, fingerprint)
        for chunk in chunks:
            if rng.random() < 0.1:
                chunk["system_fingerprint"] = fp = rng.choice([*ODD_FINGERPRINTS, "fp_other", None])
                what.append(f"chunk fingerprint {fp!r:.30}")
            if rng.random() < 0.05:
                chunk["id"] = "chatcmpl-other"
                what.append("chunk id differs")
            if rng.random() < 0.05:
                chunk["model"] = rng.choice(["gpt-other", 5, None])
                what.append("chunk model differs")
            if rng.random() < 0.04:
                chunk["usage"] = usage = rng.choice(ODD_USAGE)
                what.append(f"chunk usage {usage!r:.30}")
            if rng.random() < 0.04:
                chunk["choices"] = value = rng.choice(ODD_VALUES)
                what.append(f"chunk choices {value!r:.20}")
        events = [(None, dumps(c)) for c in chunks]
        events.append((None, b"[DONE]"))
    roll = rng.random()
    if roll < 0.08:
        at = rng.randrange(len(events))
        events.insert(at, (None, b'{"truncated": '))
        what.append("invalid json mid-stream")
    elif roll < 0.14:
        error = orjson.dumps({"error": {"message": "overloaded", "type": "server_error"}})
        events.insert(rng.randrange(len(events)), (rng.choice([None, "error"]), error))
        what.append("error event")
    elif roll < 0.2:
        del events[-1]
        what.append("last event missing")
    elif roll < 0.25:
        events.insert(rng.randrange(len(events)), (None, b"[DONE]"))
        what.append("[DONE] early or twice")
    elif roll < 0.28 and route != "responses":
        events.append((None, b"[DONE]"))
        what.append("[DONE] twice")
    elif roll < 0.31:
        at = rng.randrange(len(events))
        name, payload = events[at]
        events[at] = (rng.choice(["error", "message", "response.failed", "ping"]), payload)
        what.append(f"event name changed at {at}")
    out = bytearray()
    if rng.random() < 0.05:
        out += b"\xef\xbb\xbf"
        what.append("bom")
    for name, payload in events:
        if rng.random() < 0.15:
            out += rng.choice([b": keep-alive\n\n", b":\n\n", b": ping\r\n\r\n", b"retry: 10\n\n"])
            what.append("comment")
        out += frame(rng, payload, what, name)
    if rng.random() < 0.08:
        cut = rng.randrange(1, len(out))
        what.append(f"stops mid-frame at {cut}")
        return bytes(out[:cut])
    return bytes(out)


STATUS_LINES = {
    200: "200 OK",
    201: "201 Created",
    202: "202 Accepted",
    203: "203 Non-Authoritative Information",
    204: "204 No Content",
    206: "206 Partial Content",
    301: "301 Moved Permanently",
    302: "302 Found",
    303: "303 See Other",
    304: "304 Not Modified",
    307: "307 Temporary Redirect",
    308: "308 Permanent Redirect",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    404: "404 Not Found",
    408: "408 Request Timeout",
    409: "409 Conflict",
    413: "413 Payload Too Large",
    429: "429 Too Many Requests",
    499: "499 Client Closed",
    500: "500 Internal Server Error",
    502: "502 Bad Gateway",
    503: "503 Service Unavailable",
    504: "504 Gateway Timeout",
    599: "599 Odd",
}
ERROR_BODIES = [
    b'{"error": {"message": "nope", "type": "invalid_request_error", "code": "x"}}',
    b"<html><body>Bad gateway</body></html>",
    b"",
    b"[]",
    b'"error"',
    b'{"error": "flat"}',
    b'{"choices": [], "error": {"message": "both"}}',
    b"\xff\xfe\x00garbage",
    b'{"detail": "not found"}',
]


def draw(rng: random.Random, number: int, upstream_port: int) -> Case:
    """One case: the request's route and mode, then the upstream's answer to it."""
    route = rng.choice(["chat", "chat", "completions", "embeddings", "responses", PASSING])
    stream = route not in ("embeddings", PASSING) and rng.random() < 0.4
    what: list[str] = [route + (" stream" if stream else "")]
    status = 200
    if rng.random() < 0.22:
        status = rng.choice(sorted(STATUS_LINES))
        what.append(f"status {status}")
    whole = not stream or rng.random() < 0.05
    if stream and whole:
        what.append("a whole answer to a stream")
    if status == 200 or rng.random() < 0.3:
        body = whole_body(rng, route, what) if whole else stream_body(rng, route, what)
    else:
        body = rng.choice(ERROR_BODIES)
    storable = True
    if rng.random() < 0.02:
        body, storable = big(body, stream, whole), False
        what.append(f"{len(body)} bytes, over max-entry")
    content_type = "application/json" if whole else "text/event-stream"
    if rng.random() < 0.1:
        content_type = rng.choice(
            [
                "",
                "text/html",
                "application/json; charset=utf-16",
                "text/event-stream" if not stream else "application/json",
                "application/x-ndjson",
                "text/plain; charset=\u00ff".encode("utf-8").decode("latin-1"),
                "multipart/mixed; boundary=x",
            ]
        )
        what.append(f"content-type {content_type!r}")
    headers = [f"Content-Type: {content_type}"] if content_type else []
    decoded: bytes | None = body
    sent = body
    coding = ""
    if rng.random() < 0.15:
        coding, sent, decoded = encode(rng, body, what)
        headers.append(f"Content-Encoding: {coding}")
    wire = sent
    close = False
    framing = rng.random()
    if framing < 0.12:
        headers.append("Transfer-Encoding: chunked")
        sent, close, decoded = chunked(rng, sent, decoded, what)
    elif framing < 0.17:
        what.append("no length, closes")
        headers.append("Connection: close")
        close = True
    elif framing < 0.21:
        cut = rng.randrange(0, max(1, len(sent)))
        headers.append(f"Content-Length: {len(sent)}")
        sent = sent[:cut]
        close, decoded = True, None
        what.append(f"body cut at {cut} of its length")
    elif framing < 0.23:
        headers.append(f"Content-Length: {len(sent) + 10}")
        close, decoded = True, None
        what.append("length 10 over, closes")
    elif framing < 0.26:
        short = rng.randrange(0, max(1, len(sent)))
        headers.append(f"Content-Length: {short}")
        # The answer is what its length says; the bytes past it, junk on the connection.
        decoded, wire = None if coding else sent[:short], sent[:short]
        what.append(f"length {short} under the body")
    elif framing < 0.28:
        headers += [f"Content-Length: {len(sent)}", f"Content-Length: {len(sent) + 1}"]
        decoded = None
        what.append("two lengths")
    elif framing < 0.30:
        headers += [f"Content-Length: {len(sent)}", "Transfer-Encoding: chunked"]
        decoded = None
        what.append("length and chunked")
    else:
        headers.append(f"Content-Length: {len(sent)}")
    if 300 <= status < 400:
        headers.append(f"Location: http://127.0.0.1:{upstream_port}/v1/redirected")
    extra = rng.random()
    if extra < 0.04:
        headers.append("X-Huge: " + "a" * rng.choice([8000, 9000, 70000]))
        what.append("huge header")
    elif extra < 0.08:
        headers += [f"X-Dup: {i}" for i in range(rng.choice([2, 50, 200]))]
        what.append("many headers")
    elif extra < 0.11:
        headers += ["Content-Type: text/plain", "Content-Type: application/json"]
        what.append("two content types")
    elif extra < 0.14:
        headers.append(rng.choice(["Cache-Control: no-store", "Vary: *", "Cache-Control: ,,;="]))
        what.append(headers[-1])
    elif extra < 0.16:
        headers.append("Set-Cookie: session=upstream-secret")
        what.append("set-cookie")
    elif extra < 0.18:
        headers.append("X-Repro-Cache: HIT")
        what.append("forged x-repro")
    prefix = b""
    if rng.random() < 0.04:
        prefix = rng.choice(
            [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"]
        )
        what.append("1xx first")
    line = f"HTTP/1.1 {STATUS_LINES[status]}"
    if status == 200 and rng.random() < 0.02:
        line = rng.choice(["HTTP/1.0 200 OK", "HTTP/1.1 200", "HTTP/1.1 2000 OK", "HTTX/1.1 200"])
        what.append(f"status line {line!r}")
        decoded = decoded if line in ("HTTP/1.0 200 OK", "HTTP/1.1 200") else None
    head = "\r\n".join([line, *headers, "", ""]).encode("latin-1")
    if status in (204, 304):
        decoded = b"" if decoded is not None else None
    cached = route != PASSING
    if cached and not storable and not stream and decoded is not None and len(decoded) > MAX_ENTRY:
        decoded = None  # a whole answer over max-entry is a 502
    stall = False
    if rng.random() < 0.01:
        stall, decoded = True, None
        sent = sent[: len(sent) // 2]
        what.append("goes silent halfway")
    mode = rng.choice(["miss"] * 6 + ["refresh", "refresh", "concurrent"])
    if stream and rng.random() < 0.15:
        mode = "leave"
    what.append(mode)
    raw = prefix + head + sent
    cuts: tuple[int, ...] = ()
    if rng.random() < 0.25:
        cuts = tuple(sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(1, 6)))))
        what.append(f"sent in {len(cuts) + 1} pieces")
    return Case(
        number,
        route,
        stream,
        raw,
        close,
        status,
        body,
        decoded,
        coding,
        wire,
        stall=stall,
        cuts=cuts,
        storable=storable,
        mode=mode,
        what=what,
    )


def big(body: bytes, stream: bool, whole: bool) -> bytes:
    """`body` grown past the proxy's 1 MiB max-entry: a stream by comments before it, a whole
    answer by spaces inside it (still the same JSON)."""
    if stream and not whole:
        return b": padding\n\n" * 100_000 + body
    return body[:1] + b" " * (1 << 20) + body[1:]


def encode(rng: random.Random, body: bytes, what: list[str]) -> tuple[str, bytes, bytes | None]:
    """A coding label and the bytes sent under it; the decoded body, None when corrupt."""
    roll = rng.randrange(10)
    if roll == 0:
        what.append("gzip")
        return "gzip", gzip.compress(body), body
    if roll == 1:
        what.append("deflate (zlib)")
        return "deflate", zlib.compress(body), body
    if roll == 2:
        what.append("gzip, cut")
        packed = gzip.compress(body)
        return "gzip", packed[: len(packed) // 2], None
    if roll == 3:
        what.append("gzip label, plain body")
        return "gzip", body, None
    if roll == 4:
        what.append("gzip with trailing garbage")
        return "gzip", gzip.compress(body) + b"garbage", None
    if roll == 5:
        what.append("br label, plain body")
        return "br", body, body
    if roll == 6:
        what.append("zstd")
        return "zstd", zstandard.ZstdCompressor().compress(body), body
    if roll == 7:
        what.append("gzip twice labelled once")
        return "gzip", gzip.compress(gzip.compress(body)), gzip.compress(body)
    if roll == 8:
        coding = rng.choice(["gzip, gzip", "identity", "x-unknown", "GZIP", "deflate, br"])
        what.append(f"coding {coding!r}")
        packed = gzip.compress(body) if "gzip" in coding.lower() else body
        # Codings are named case-blind, and identity is none (RFC 9110 8.4.1).
        return coding, packed, body if coding in ("GZIP", "identity") else None
    what.append("raw deflate")
    compressor = zlib.compressobj(wbits=-15)
    return "deflate", compressor.compress(body) + compressor.flush(), body


def chunked(
    rng: random.Random, sent: bytes, decoded: bytes | None, what: list[str]
) -> tuple[bytes, bool, bytes | None]:
    pieces = [sent[i : i + 97] for i in range(0, len(sent), 97)]
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    roll = rng.random()
    if roll < 0.2:
        what.append("chunked, no last chunk, closes")
        return out, True, None
    if roll < 0.3:
        what.append("chunked, bad size")
        return b"zz\r\n" + out + b"0\r\n\r\n", True, None
    if roll < 0.4:
        what.append("chunked, cut mid-chunk")
        return out[: len(out) // 2], True, None
    what.append("chunked")
    return out + b"0\r\n\r\n", False, decoded


def sane(case: Case) -> bytes:
    """The answer the upstream gives once it has turned sane."""
    if case.stream and case.route == "responses":
        body = b"".join(
            b"event: %s\ndata: %s\n\n" % (e["type"].encode(), orjson.dumps(e))
            for e in response_events("sane")
        )
    elif case.stream:
        frames = [orjson.dumps(c) for c in chat_chunks(case.route, SANE_FP, "sane")]
        body = b"".join(b"data: " + f + b"\n\n" for f in [*frames, b"[DONE]"])
    else:
        answer = whole_answer(case.route, SANE_FP, "sane")
        if case.route == "embeddings":
            answer["data"][0]["embedding"] = [9.0]
        body = orjson.dumps(answer)
    kind = "text/event-stream" if case.stream else "application/json"
    return b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        kind.encode(),
        len(body),
        body,
    )


# --- the upstream -----------------------------------------------------------------------------


@dataclass
class Script:
    """What the upstream answers now; swapped between the phases of a case."""

    raw: bytes = b""
    close: bool = False
    stall: bool = False
    cuts: tuple[int, ...] = ()

    def set(self, case: Case) -> None:
        self.raw, self.close, self.stall, self.cuts = case.raw, case.close, case.stall, case.cuts

    def turn_sane(self, case: Case) -> None:
        self.raw, self.close, self.stall, self.cuts = sane(case), False, False, ()

    async def __call__(self, writer: asyncio.StreamWriter, _: Received) -> None:
        raw, close, stall, cuts = self.raw, self.close, self.stall, self.cuts
        for start, end in itertools.pairwise((0, *cuts, len(raw))):
            writer.write(raw[start:end])
            await writer.drain()
            if end < len(raw):
                await asyncio.sleep(PIECE_PAUSE)  # a read of its own on the proxy's side
        if stall:
            await asyncio.sleep(ANSWER_BOUND)  # cancelled with the upstream
            raise ConnectionResetError
        if close:
            writer.close()
            raise ConnectionResetError  # ends the upstream's loop on this connection


# --- checks -----------------------------------------------------------------------------------


@dataclass
class Got:
    status: int
    headers: dict[str, str]
    body: bytes
    took: float
    cut: bool = False  # the answer ended before its framing said it would


async def ask(
    session: aiohttp.ClientSession, proxy: Proxy, case: Case, extra: dict[str, str]
) -> Got:
    path, body = case.request()
    started = time.monotonic()
    async with session.post(
        f"{proxy.v1}/{path}",
        data=body,
        headers={**AUTH, **extra},
        timeout=aiohttp.ClientTimeout(total=ANSWER_BOUND),
        auto_decompress=False,
        allow_redirects=False,
    ) as answer:
        data, cut = bytearray(), False
        try:
            async for piece in answer.content.iter_any():
                data += piece
        except aiohttp.ClientPayloadError:
            cut = True
        took = time.monotonic() - started
        return Got(answer.status, dict(answer.headers), bytes(data), took, cut)


def is_proxy_error(got: Got) -> bool:
    """An OpenAI-shaped error the proxy wrote itself (502, 504, ...)."""
    try:
        error = orjson.loads(got.body)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and {"message", "type", "code"} <= error.keys()


def valid_answer(case: Case, body: bytes) -> bool:
    """A stored body a client can use: a whole answer with its list of choices (data, output),
    or a stream every frame of which parses and which ends as its route says."""
    if not case.stream:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(value, dict):
            return False
        field_name = {"embeddings": "data", "responses": "output"}.get(case.route, "choices")
        return isinstance(value.get(field_name), list)
    payloads = sse_payloads(body)
    if case.route == "responses":
        try:
            return orjson.loads(payloads[-1])["type"] == "response.completed"
        except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
            return False
    if b"[DONE]" not in payloads:
        return False
    # The SDK reads to the first [DONE], and nothing after it is relayed or kept.
    done = payloads.index(b"[DONE]")
    if done != len(payloads) - 1:
        return False
    try:
        chunks = [orjson.loads(p) for p in payloads[:done]]
    except orjson.JSONDecodeError:
        return False
    if not all(isinstance(c, dict) and "error" not in c for c in chunks):
        return False
    choices = [c.get("choices") for c in chunks]
    if not all(isinstance(listed, list) for listed in choices):
        return False
    return any(choice.get("finish_reason") for listed in choices for choice in listed)


def past_first_done(body: bytes) -> int | None:
    """Just past the blank line that dispatches the stream's first `[DONE]` event (the SDK
    reads no further), its lines read as `sse_payloads` reads them; None if it has none."""
    data = None
    for found in re.finditer(rb"([^\r\n]*)(\r\n|\r|\n)", body):
        line = found.group(1)
        if not line:
            if data is not None and data.startswith(b"[DONE]"):
                return found.end()
            data = None
        elif line.startswith(b"data:"):
            value = line[5:].removeprefix(b" ")
            data = value if data is None else data + b"\n" + value
    return None


def sse_payloads(body: bytes) -> list[bytes]:
    """The data of each event, as the SSE specification reads a stream: lines end with CRLF,
    LF or CR, an event's data lines are joined with LF, a blank line dispatches it."""
    payloads, data = [], None
    for line in re.split(rb"\r\n|\r|\n", body):
        if not line:
            if data is not None:
                payloads.append(data)
            data = None
        elif line.startswith(b"data:"):
            value = line[5:].removeprefix(b" ")
            data = value if data is None else data + b"\n" + value
    return payloads


def check_first(case: Case, got: Got, problems: list[str]) -> None:
    if got.took > ANSWER_BOUND - 1:
        problems.append(f"slow: {got.took:.1f}s")
    if got.cut:
        # A cut is only fair where the upstream broke it: a stream or a pass-through answer
        # relayed as it came.
        relayed = case.stream or case.route == PASSING
        if not (relayed and (case.close or case.decoded is None)):
            problems.append("the proxy cut its answer short")
        return
    if (got.status == 500 and case.status != 500) or b"internal_error" in got.body:
        problems.append(f"internal error {got.status}: {got.body[:200]!r}")
        return
    if is_proxy_error(got) and got.status in (502, 504) and got.body != case.body:
        return  # a clear error of the proxy's own
    if case.coding and got.body == case.wire and got.headers.get("Content-Encoding") == case.coding:
        return  # passed on in the coding it came in, undecoded, for the client to decode
    if case.decoded is None:
        # No faithful reading of the answer exists: only a relayed stream may pass its bytes
        # on as they came, the upstream's own.
        relayed = (case.stream or case.route == PASSING) and case.body.startswith(got.body)
        relayed = relayed and bool(got.body)
        if got.status == case.status == 200 and not relayed:
            problems.append(f"relayed a broken answer: {got.status} {got.body[:120]!r}")
        return
    if got.status != case.status:
        problems.append(f"status {got.status} for the upstream's {case.status}: {got.body[:200]!r}")
        return
    coding = got.headers.get("Content-Encoding", "")
    if got.body == case.decoded and coding.lower() in ("", "identity", case.coding.lower()):
        if coding and coding.lower() != "identity" and case.coding.lower() in ("gzip", "deflate"):
            problems.append(f"decoded body labelled {coding!r}")
        return
    if case.coding and got.body != case.decoded and coding == case.coding:
        return  # passed on in its coding (br, zstd): the client decodes it
    end = past_first_done(case.decoded) if case.stream else None
    if end is not None and got.body == case.decoded[:end]:
        return  # cut where the stream ended: what the upstream sent past it reaches no one
    problems.append(f"unfaithful: got {got.body[:160]!r}, expected {case.decoded[:160]!r}")


def check_cached(case: Case, firsts: list[Got], later: Got, how: str, problems: list[str]) -> None:
    """A HIT must be one of the answers the proxy gave, byte for byte, and an answer."""
    if later.headers.get("X-Repro-Cache") not in ("HIT", "STALE"):
        if how == "only-if-cached" and later.status != 504:
            problems.append(f"{how}: {later.status} without a HIT")
        return
    if not case.storable and later.body == case.body:
        problems.append(f"{how}: stored an answer over max-entry")
    if case.route == PASSING:
        problems.append(f"{how}: a HIT on a pass-through route")
    served = [first for first in firsts if first.body == later.body]
    if case.mode == "leave" and not served:
        # Read on after the client left: the upstream's stream to its clean end.
        whole = case.decoded or (b"" if case.coding else case.body)
        if not (whole.startswith(later.body) and later.body.startswith(firsts[0].body)):
            problems.append(f"{how}: HIT {later.body[:120]!r} is not the upstream's stream")
    elif not served:
        problems.append(f"{how}: HIT {later.body[:120]!r} is none of the answers given")
    elif all(first.status != 200 or first.cut for first in served) and case.mode != "leave":
        problems.append(f"{how}: HIT of a {served[0].status}, cut: {served[0].cut}")
    if not valid_answer(case, later.body):
        problems.append(f"{how}: stored a malformed answer {later.body[:160]!r}")


def log_problems(log: Path) -> list[str]:
    """Lines of the proxy's log that say something went wrong inside it."""
    found = []
    for line in log.read_bytes().splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            found.append(f"not a JSON log line: {line[:200]!r}")
            continue
        if "exc" in record or record.get("level") in ("error", "critical"):
            found.append(f"{record.get('msg')}: {str(record.get('exc'))[-600:]}")
    return found


def learned_fingerprints(proxy: Proxy) -> set[str]:
    state = httpx.get(
        proxy.url + "/admin/fingerprints",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    ).json()
    found: set[str] = set()
    for model in state.values():
        found.add(model.get("current"))
        found.update(seen["fingerprint"] for seen in model.get("history", ()))
    for sample in proxy.samples():
        if sample.name == "repro_fingerprint_info":
            found.add(sample.labels["fingerprint"])
    return found


# --- the run ----------------------------------------------------------------------------------


def cases(port: int, count: int = CASES, seed: int = SEED) -> Iterator[Case]:
    rng = random.Random(seed)
    for number in range(count):
        yield draw(rng, number, port)


async def run_cases(
    proxy: Proxy, script: Script, upstream: Scripted, all_cases: list[Case]
) -> dict[int, list[str]]:
    problems: dict[int, list[str]] = {}
    given: dict[int, list[Got]] = {}
    connector = aiohttp.TCPConnector(limit=8, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for case in all_cases:
            found: list[str] = []
            before = len(upstream.received)
            try:
                firsts = await first_answers(session, proxy, script, case)
            except (TimeoutError, aiohttp.ClientError) as exc:
                problems[case.number] = [f"no answer: {type(exc).__name__} {exc}"]
                continue
            given[case.number] = firsts
            for first in firsts[-3 if case.mode == "concurrent" else -1 :]:
                if case.mode != "leave":
                    check_first(case, first, found)
            paths = [r.request_line for r in upstream.received[before:]]
            if any("redirected" in p for p in paths):
                found.append("followed a redirect")
            try:
                cached = await ask(session, proxy, case, {"Cache-Control": "only-if-cached"})
                check_cached(case, firsts, cached, "only-if-cached", found)
                script.turn_sane(case)
                again = await ask(session, proxy, case, {})
                firsts.append(again)
                check_cached(case, firsts, again, "repeat", found)
            except (TimeoutError, aiohttp.ClientError) as exc:
                found.append(f"no answer to a repeat: {type(exc).__name__} {exc}")
            if found:
                problems[case.number] = found
        # A stream is stored once it has ended, maybe after its client read it: look again.
        for case in all_cases:
            if case.number not in given:
                continue
            later = await ask(session, proxy, case, {"Cache-Control": "only-if-cached"})
            found = []
            check_cached(case, given[case.number], later, "at the end", found)
            if found:
                problems.setdefault(case.number, []).extend(found)
    return problems


async def first_answers(
    session: aiohttp.ClientSession, proxy: Proxy, script: Script, case: Case
) -> list[Got]:
    """The answers given while the upstream is hostile: one MISS; a sane answer stored, then
    the hostile one asked for with no-cache; or three identical requests at once."""
    if case.mode == "refresh":
        script.turn_sane(case)
        stored = await ask(session, proxy, case, {})
        script.set(case)
        return [stored, await ask(session, proxy, case, {"Cache-Control": "no-cache"})]
    script.set(case)
    if case.mode == "concurrent":
        return list(await asyncio.gather(*(ask(session, proxy, case, {}) for _ in range(3))))
    if case.mode == "leave":
        return [await leave(session, proxy, case)]
    return [await ask(session, proxy, case, {})]


async def leave(session: aiohttp.ClientSession, proxy: Proxy, case: Case) -> Got:
    """Ask, take the first bytes of the answer, and go."""
    path, body = case.request()
    started = time.monotonic()
    async with session.post(
        f"{proxy.v1}/{path}",
        data=body,
        headers=AUTH,
        timeout=aiohttp.ClientTimeout(total=ANSWER_BOUND),
        auto_decompress=False,
        allow_redirects=False,
    ) as answer:
        try:
            first = await answer.content.readany()
        except aiohttp.ClientPayloadError:
            first = b""
        answer.close()
        return Got(answer.status, dict(answer.headers), first, time.monotonic() - started, True)


def fuzz(proxy_flags: tuple[str, ...], tmp_path: Path, seed: int) -> None:
    script = Script()
    log = tmp_path / "proxy.log"
    started = time.monotonic()
    with Scripted(script) as upstream, log.open("wb") as sink:
        all_cases = list(cases(upstream.port, CASES, seed))
        proxy = launch_proxy(
            upstream.v1,
            "--upstream-timeout",
            "1",
            "--admin-token",
            TOKEN,
            "--max-entry",
            str(MAX_ENTRY),
            *proxy_flags,
            stderr=sink,
        )
        try:
            wait_up(proxy)
            warm = asyncio.run(run_cases(proxy, script, upstream, all_cases[:20]))
            rss_before = rss_kib(proxy.proc.pid)
            rest = asyncio.run(run_cases(proxy, script, upstream, all_cases[20:]))
            rss_after = rss_kib(proxy.proc.pid)
            healthy = httpx.get(proxy.url + "/healthz", timeout=5).status_code
            fingerprints = learned_fingerprints(proxy)
        finally:
            stop(proxy.proc)
    took = time.monotonic() - started
    problems = warm | rest
    report = [
        f"case {n} ({'; '.join(all_cases[n].what)}): {p}"
        for n, found in sorted(problems.items())
        for p in found
    ]
    odd = {
        fp
        for fp in fingerprints
        if fp is not None and fp != "none" and not _FINGERPRINT.fullmatch(fp)
    }
    print(f"fuzz: {CASES} cases (seed {seed}) in {took:.1f}s, rss {rss_before} -> {rss_after} KiB")
    assert not report, "\n".join(report)
    assert not odd, f"fingerprints learned from invalid values: {odd}"
    assert healthy == 200
    assert not log_problems(log), "\n".join(log_problems(log))
    assert rss_after - rss_before < RSS_GROWTH_BOUND_KIB


@pytest.mark.parametrize(("policy", "seed"), [("pin", SEED), ("follow", SEED + 1)])
def test_fuzzed_upstream_answers_against_the_memory_store(
    policy: str, seed: int, tmp_path: Path
) -> None:
    fuzz(("--fingerprint-policy", policy), tmp_path, seed)


def test_fuzzed_upstream_answers_against_redis(redis_server: RedisServer, tmp_path: Path) -> None:
    redis_server.flushall()
    fuzz(("--store", redis_server.url, "--fingerprint-policy", "pin"), tmp_path, SEED + 2)


# --- what the fuzz found, each pinned by a small deterministic case ------------------------------


@pytest.mark.parametrize(
    ("stream", "body"),
    [
        (False, b'{"choices": null, "system_fingerprint": "fp_taught"}'),
        (False, b'{"object": "list", "data": "x", "system_fingerprint": "fp_taught"}'),
        (
            False,
            b'{"choices": [], "error": {"message": "boom"}, "system_fingerprint": "fp_taught"}',
        ),
        (
            True,
            b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}],'
            b' "system_fingerprint": "fp_taught"}\n\n'
            b'data: {"choices": {}, "system_fingerprint": "fp_taught"}\n\n'
            b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],'
            b' "system_fingerprint": "fp_taught"}\n\n'
            b"data: [DONE]\n\n",
        ),
    ],
    ids=["choices-null", "data-string", "error-beside", "stream-chunk-choices-object"],
)
def test_an_ill_typed_answer_is_relayed_but_neither_stored_nor_taught(
    stream: bool, body: bytes
) -> None:
    kind = b"text/event-stream" if stream else b"application/json"
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        kind,
        len(body),
        body,
    )
    case = Case(0, "chat", stream, raw, False, 200, body, body)
    with Scripted(Script(raw)) as upstream:
        proxy = wait_up(launch_proxy(upstream.v1, "--admin-token", TOKEN))
        try:

            async def both() -> tuple[Got, Got]:
                async with aiohttp.ClientSession() as session:
                    first = await ask(session, proxy, case, {})
                    again = await ask(session, proxy, case, {"Cache-Control": "only-if-cached"})
                    return first, again

            first, again = asyncio.run(both())
            fingerprints = learned_fingerprints(proxy)
        finally:
            stop(proxy.proc)
    assert (first.status, first.body) == (200, body)  # the upstream's answer, as it came
    assert again.status == 504, again.body  # and nothing stored
    assert "fp_taught" not in fingerprints


PINGS = 100_000


def test_a_stream_of_many_frames_naming_nothing_does_not_hold_the_proxy() -> None:
    """Tens of thousands of `: ping` comments before the first token, in one chunk: the proxy
    cut the chunk after every frame, copying the rest of it each time, and held its event loop
    for a minute on a MiB of them (every other client waiting). Now: the time to relay them."""
    token = (
        b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}'
    )
    body = b": ping\n\n" * PINGS + token + b"\n\ndata: [DONE]\n\n"
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    case = Case(0, "chat", True, raw, False, 200, body, body)
    with Scripted(Script(raw)) as upstream:
        proxy = wait_up(launch_proxy(upstream.v1))
        try:

            async def relayed() -> tuple[Got, float]:
                async with aiohttp.ClientSession() as session:
                    asked = asyncio.create_task(ask(session, proxy, case, {}))
                    await asyncio.sleep(0.2)  # the proxy is reading the pings by now
                    started = time.monotonic()
                    async with session.get(proxy.url + "/healthz") as health:
                        assert health.status == 200
                    return await asked, time.monotonic() - started

            got, health_took = asyncio.run(relayed())
        finally:
            stop(proxy.proc)
    assert (got.status, got.body) == (200, body)
    assert got.took < 8, got.took  # was about 35 s
    assert health_took < 4, health_took


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 100\r\n\r\n" + b'{"results": [',
        b"Transfer-Encoding: chunked\r\n\r\n" + b'd\r\n{"results": [\r\n',
    ],
    ids=["length", "chunked"],
)
def test_a_pass_through_answer_the_upstream_breaks_is_broken_for_the_client(
    framing: bytes,
) -> None:
    """The upstream sends a pass-through answer's head and part of its body, then closes:
    the proxy wrote its own 502 after the bytes already relayed, a second head the client
    read as the first answer's body (with chunked framing, as a broken chunk; with a length,
    it waited for the rest until its keep-alive ended). The client must see the break."""
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + framing
    with Scripted(Script(raw, close=True)) as upstream:
        proxy = wait_up(launch_proxy(upstream.v1))
        try:
            body = b'{"input_file_id": "file-1", "endpoint": "/v1/chat/completions"}'
            request = (
                b"POST /v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer sk-fuzz\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            started = time.monotonic()
            received = raw_exchange(proxy.port, request)
            took = time.monotonic() - started
        finally:
            stop(proxy.proc)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.count(b"HTTP/1.1 ") == 1, received
    assert b'{"results": [' in received
    assert took < 5, took
