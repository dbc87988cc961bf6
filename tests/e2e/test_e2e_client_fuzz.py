"""A seeded, bounded fuzz pass of a real proxy from a hostile client, over raw sockets.

A few hundred requests (random JSON shapes on every cached route, wrong types for every known
parameter, hostile strings and bytes, odd methods, paths, headers, HTTP/1.0, pipelining) in
front of the real sim, with the memory store and with a real redis-server. Whatever comes in:
no 500 nor `internal_error`, no traceback in the proxy's log, every error of ours in OpenAI's
shape with a 4xx for a client's mistake, the proxy still healthy, pipelined answers complete and
in order, and no request ever served another one's answer (each accepted request is sent again
changed in meaning: never a HIT; and again as it was: a HIT of its own bytes).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fixtures_procs import ProxyFactory, Sim, raw_answer

SEED = 20261205
AUTH = "Bearer sk-fuzz"
CACHED = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/openai/deployments/dep-1/chat/completions?api-version=2024-10-21",
    "/openai/v1/chat/completions",
    "/openai/responses",
]
KNOWN = [
    "model", "messages", "prompt", "input", "temperature", "top_p", "n", "seed", "stream",
    "stream_options", "logprobs", "top_logprobs", "max_tokens", "max_completion_tokens", "stop",
    "tools", "tool_choice", "parallel_tool_calls", "response_format", "user", "metadata",
    "store", "presence_penalty", "frequency_penalty", "logit_bias", "echo", "best_of",
    "suffix", "encoding_format", "dimensions", "background", "previous_response_id",
    "conversation", "prompt_cache_key", "instructions", "text", "reasoning", "truncation",
    "include", "modalities", "audio", "prediction", "service_tier", "web_search_options",
]  # fmt: skip
NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")
STRINGS = [
    "", "a", "x" * 70_000, "\u0000", "nul\u0000inside", "\ufeff", NFC, NFD, "\U0001f600",
    "\u202eevil", "\r\n", "../../etc", "%2e%2e", "true", "1", "null", "{}", "é" * 3000,
]  # fmt: skip


def scalar(rnd: random.Random) -> Any:
    return rnd.choice(
        [
            True, False, None, 0, 1, -1, 0.0, -0.0, 1.0, 1e16, 10**16 + 1, 2**63 - 1, 2**64 - 1,
            -(2**63), 1e300, 5e-324, 0.5, rnd.randrange(-(10**6), 10**6), rnd.choice(STRINGS),
        ]
    )  # fmt: skip


def value(rnd: random.Random, depth: int = 0) -> Any:
    roll = rnd.random()
    if depth > 3 or roll < 0.5:
        return scalar(rnd)
    if roll < 0.75:
        return [value(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    return {rnd.choice(KNOWN + STRINGS[:8]): value(rnd, depth + 1) for _ in range(rnd.randrange(4))}


def valid_base(route: str, nonce: str) -> dict[str, Any]:
    if "chat" in route:
        return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": nonce}]}
    if "embeddings" in route:
        return {"model": "text-embedding-3-small", "input": nonce}
    if "responses" in route:
        return {"model": "gpt-4o-mini", "input": nonce}
    return {"model": "gpt-3.5-turbo-instruct", "prompt": nonce}


def fuzzed_body(rnd: random.Random, route: str, nonce: str) -> dict[str, Any]:
    """A body near a valid one: some known parameters set to values of any type."""
    body: dict[str, Any] = valid_base(route, nonce) if rnd.random() < 0.7 else {}
    for _ in range(rnd.randrange(5)):
        body[rnd.choice(KNOWN)] = value(rnd)
    body["x_fuzz_nonce"] = nonce  # an unknown parameter: keyed, and makes each request new
    return body


def raw_bodies(rnd: random.Random) -> bytes:
    """Bytes that are not quite one JSON object."""
    valid = orjson.dumps(valid_base("chat", "raw"))
    deep = b'{"a":' * 200 + b"1" + b"}" * 200
    return rnd.choice(
        [
            b"", b"{", b"[]", b"null", b"\xef\xbb\xbf" + valid, valid + b"\x00", b"\xff\xfe{}",
            b'{"model": "m", "model": "n", "messages": []}', b'{"a": "\\ud800"}',
            b'{"a": "\xc3\x28"}', b'{"a": NaN}', b'{"a": 1e999}', deep,
            b'{"n": 123456789012345678901234567890}', valid.replace(b"{", b"{ \n\t", 1),
            b'{"messages": "' + b"\\u0000" * 1000 + b'"}', valid * 2, b"\x00" * 64,
            b'{"stream": "true", "model": "m"}', b'{"stream": 1, "model": "m"}',
        ]
    )  # fmt: skip


CONTENT_TYPES = [
    "application/json", "text/plain", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/json; charset=latin-1", "", "\x7f",
    "application/json, text/plain",
]  # fmt: skip
ENCODINGS = ["gzip", "deflate", "br", "zstd", "gzip, gzip", "identity", "GZIP", "x-gzip", ","]
CACHE_CONTROLS = [
    "no-cache", "no-store", "only-if-cached", "max-age=0", "max-age=-1", "max-age=" + "9" * 40,
    "stale-if-error=abc", "no-cache, only-if-cached", 'max-age="5"', ",,,", "private",
]  # fmt: skip
AUTHS = [
    "Bearer", "Bearer ", "bearer sk-fuzz", "Basic c2s6", "Bearer sk-fuzz, Bearer sk-other",
    "Bearer " + "k" * 8000, "sk-fuzz", "Bearer \t sk-fuzz",
]  # fmt: skip
REPRO_HEADERS = [
    "X-Repro-Namespace", "X-Repro-Cache", "X-Repro-Key", "X-Repro-Seed",
    "X-Repro-Seed-Source", "X-Repro-Fingerprint",
]  # fmt: skip
GARBAGE = ["", " ", "x" * 300, "../..", "HIT", "0" * 64, "-1", "é", "\t", "a,b", "%00"]


@dataclass
class Sent:
    """One request as written on the wire."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    version: str = "HTTP/1.1"
    why: str = ""  # the generator that made it, for the failure message

    def wire(self) -> bytes:
        head = [f"{self.method} {self.target} {self.version}"]
        names = {name.lower() for name, _ in self.headers}
        if "host" not in names and self.version == "HTTP/1.1":
            head.append("Host: 127.0.0.1")
        head += [f"{name}: {value}" for name, value in self.headers]
        framed = "content-length" in names or "transfer-encoding" in names
        if not framed and (self.body or self.method == "POST"):
            head.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body


@dataclass
class Got:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def error(self) -> Any:
        try:
            parsed = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None
        return parsed.get("error") if isinstance(parsed, dict) else None


async def read_answer(reader: asyncio.StreamReader, method: str) -> Got:
    """One final answer, read past any interim one (`100 Continue`)."""
    status = 100
    while 100 <= status < 200:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, val = line.partition(":")
            headers[name.strip().lower()] = val.strip()
    if method == "HEAD" or status in (204, 304):
        return Got(status, headers)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
        return Got(status, headers, bytes(body))
    if "content-length" in headers:
        return Got(status, headers, await reader.readexactly(int(headers["content-length"])))
    return Got(status, headers, await reader.read())


@dataclass(frozen=True)
class Ports:
    """Two proxies sharing a store: one in front of the sim's /v1, one of its root (Azure)."""

    openai: int
    azure: int

    def of(self, target: str) -> int:
        return self.azure if target.startswith("/openai/") else self.openai


async def exchange(ports: Ports, requests: list[Sent]) -> list[Got]:
    """Write every request at once on one connection and read as many answers, in order."""
    port = ports.of(requests[0].target)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**22)
    try:
        writer.write(b"".join(r.wire() for r in requests))
        await writer.drain()
        async with asyncio.timeout(5):
            return [await read_answer(reader, r.method) for r in requests]
    finally:
        writer.close()


def check(sent: Sent, got: Got) -> None:
    """The invariants of any answer to any request."""
    where = f"{sent.why}: {sent.method} {sent.target[:120]} -> {got.status} {got.body[:300]!r}"
    assert 100 <= got.status < 500 or got.status in (501, 504), where
    error = got.error()
    if error is not None and isinstance(error, dict):
        assert error.get("code") != "internal_error", where
    path = sent.target.partition("?")[0]
    if got.status >= 400 and path.startswith(("/v1/", "/openai/")) and sent.method != "HEAD":
        assert isinstance(error, dict), where
        assert isinstance(error.get("message"), str) and error["message"], where
        assert isinstance(error.get("type"), str), where
        assert "code" in error and "param" in error, where
        assert got.headers.get("content-type", "").startswith("application/json"), where
        if error.get("code") == "cache_miss":  # CONTRACT.md: never retried by an SDK
            assert got.headers.get("x-should-retry") == "false", where


def generate(rnd: random.Random, count: int) -> list[Sent]:
    out: list[Sent] = []
    for index in range(count):
        nonce = f"n{index}-{rnd.randrange(10**9)}"
        route = rnd.choice(CACHED)
        headers = [("Authorization", AUTH), ("Content-Type", "application/json")]
        kind = rnd.randrange(12)
        if kind <= 2:
            body = orjson.dumps(fuzzed_body(rnd, route, nonce), option=orjson.OPT_NON_STR_KEYS)
            out.append(Sent("POST", route, headers, body, why="shape"))
        elif kind == 3:
            out.append(Sent("POST", route, headers, raw_bodies(rnd), why="bytes"))
        elif kind == 4:
            body = orjson.dumps(valid_base(route, nonce))
            name = rnd.choice(
                ["Content-Type", "Content-Encoding", "Cache-Control", "Authorization"]
            )
            pool = {
                "Content-Type": CONTENT_TYPES,
                "Content-Encoding": ENCODINGS,
                "Cache-Control": CACHE_CONTROLS,
                "Authorization": AUTHS,
            }[name]
            extra = [(name, rnd.choice(pool)) for _ in range(rnd.randrange(1, 3))]
            if name == "Content-Encoding" and rnd.random() < 0.5:
                body = zlib.compress(body)[: rnd.randrange(1, 40)]
            kept = [h for h in headers if h[0] != name or name == "Cache-Control"]
            out.append(Sent("POST", route, kept + extra, body, why="header " + name))
        elif kind == 5:
            body = orjson.dumps(valid_base(route, nonce))
            extra = [(rnd.choice(REPRO_HEADERS), rnd.choice(GARBAGE)) for _ in range(3)]
            out.append(Sent("POST", route, headers + extra, body, why="x-repro"))
        elif kind == 6:
            method = rnd.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FOO", "post"])
            path = rnd.choice(
                [
                    route, "/v1//chat/completions", "/v1/./chat/completions",
                    "/v1/chat/../chat/completions", "/v1/chat%2Fcompletions",
                    "/v1/chat/completions/", "/v1/" + "a" * 6000, "/v1/%2e%2e/admin",
                    "/openai/deployments/../v1/chat/completions", "/openai/deployments/%2e/x",
                    "/v1/chat/completions?api-version=1&api-version=2", "/v1/responses/..%2f",
                    "/openai/deployments/dep-1/chat/completions?api-version=" + "9" * 40,
                    "/v1/responses/resp_x?stream=maybe", "/v1/chat/completions#frag",
                ]
            )  # fmt: skip
            body = orjson.dumps(valid_base(route, nonce)) if rnd.random() < 0.5 else b""
            out.append(Sent(method, path, headers, body, why="method/path"))
        elif kind == 7:
            body = orjson.dumps({**valid_base(route, nonce), "stream": rnd.random() < 0.5})
            keep = [("Connection", "keep-alive")] if rnd.random() < 0.5 else []
            version = rnd.choice(["HTTP/1.0", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9"])
            if rnd.random() < 0.3:
                keep.append(("Transfer-Encoding", "chunked"))
                body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            out.append(Sent("POST", route, headers + keep, body, version, why=version))
        elif kind == 8:
            body = {**valid_base(route, nonce), "stream": True}
            body["stream_options"] = rnd.choice([{"include_usage": True}, None, value(rnd)])
            out.append(Sent("POST", route, headers, orjson.dumps(body), why="stream"))
        elif kind == 9:
            body = orjson.dumps(valid_base(route, nonce))
            odd = rnd.choice(
                [
                    [("Expect", "100-continue")], [("Expect", "x<y>")],
                    [("Content-Length", str(len(body)))] * 2,
                    [("Content-Type", "application/json")] * 2, [("X-Repro-Namespace", "é" * 300)],
                    [("api-key", "sk-fuzz")], [("x-api-key", "k"), ("api-key", "k")],
                    [("Connection", "close")], [("Connection", "Authorization")],
                    [(f"X-Filler-{i}", "v" * 100) for i in range(90)],
                    [("X-Long", "v" * 7000)], [("Transfer-Encoding", "chunked")],
                    [("Accept-Encoding", "br, zstd, gzip;q=0")], [("Accept", "text/event-stream")],
                    [("Host", "evil.example")], [("Host", "127.0.0.1"), ("Host", "127.0.0.1")],
                    [("Authorization", AUTH)],
                    [("Cache-Control", "no-store"), ("Pragma", "no-cache")],
                ]
            )  # fmt: skip
            if ("Transfer-Encoding", "chunked") in odd:
                body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
                odd = odd + [("Content-Length", str(len(body)))] * (rnd.random() < 0.3)
            out.append(Sent("POST", route, headers + odd, body, why="odd headers"))
        elif kind == 10:
            rid = rnd.choice(["resp_1", "..", "%2e", "a" * 200, "resp_%00", "r?x", "é", "-"])
            query = rnd.choice(["", "?stream=true", "?include=x", "?api-version=a&api-version=b"])
            base = rnd.choice(["/v1/responses/", "/openai/responses/", "/openai/v1/responses/"])
            method = rnd.choice(["GET", "DELETE", "HEAD", "POST"])
            out.append(Sent(method, base + rid + query, headers, why="by id"))
        else:
            deployment = rnd.choice(["d", "d.e", "-x", "a" * 65, "%41", "d%2fe", "..", "_", "é"])
            version = rnd.choice(["2024-10-21", "", "a b", "x" * 33, "1&api-version=2", "%41"])
            call = rnd.choice(["chat/completions", "completions", "embeddings", "responses"])
            target = f"/openai/deployments/{deployment}/{call}?api-version={version}"
            body = orjson.dumps(valid_base(call, nonce))
            out.append(Sent("POST", target, headers, body, why="azure"))
    return out


async def fire(port: Ports, requests: list[Sent], width: int = 6) -> list[Got]:
    """Each request on a connection of its own, `width` at a time."""
    gate = asyncio.Semaphore(width)

    async def one(sent: Sent) -> Got:
        async with gate:
            try:
                return (await exchange(port, [sent]))[0]
            except TimeoutError:  # an answer that never ends, or never comes
                return Got(0, body=b"no whole answer within the time allowed")

    return list(await asyncio.gather(*(one(s) for s in requests)))


def alike(a: Any, b: Any) -> bool:
    """JSON values that mean the same: 0 and 0.0 do, true and 1 do not."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


# Changes that alter what a request asks, each one the cache must never paper over.
def changed(route: str, body: dict[str, Any]) -> list[Sent]:
    bodies = [{**body, "x_fuzz_nonce": body["x_fuzz_nonce"] + "'"}]
    for name, other in (
        ("temperature", True), ("n", True), ("logprobs", 0), ("seed", 98765), ("top_p", "1"),
        ("max_tokens", 10**16 + 1), ("x_nested", {"temperature": 1}), ("user", None),
        ("stream", not body.get("stream")), ("x_fuzz_nonce", unicodedata.normalize("NFD", NFC)),
    ):  # fmt: skip
        if not alike(body.get(name), other) and name != "user":
            bodies.append({**body, name: other})
    raw = orjson.dumps(body)
    glue = "&" if "?" in route else "?"
    out = [Sent("POST", route, HEADERS, orjson.dumps(b), why="changed body") for b in bodies]
    out += [
        Sent("POST", route, [*HEADERS, ("X-Fuzz-Routing", "1")], raw, why="keyed header"),
        Sent("POST", route + glue + "x=1", HEADERS, raw, why="query"),
        Sent("POST", route, [*HEADERS, ("X-Repro-Namespace", "other")], raw, why="namespace"),
        Sent("POST", route, [("Authorization", "Bearer sk-other")], raw, why="tenant"),
    ]
    return out


def same(route: str, body: dict[str, Any]) -> list[Sent]:
    """Spellings of the same request: each a HIT of the first answer's bytes."""
    text = json.dumps(dict(reversed(body.items())), indent=1, ensure_ascii=True)
    return [
        Sent("POST", route, HEADERS, orjson.dumps(body), why="again"),
        Sent("POST", route, HEADERS, text.encode(), why="respelled"),
        Sent("POST", route, [*HEADERS, ("User-Agent", "x"), ("traceparent", "00-1")],
             orjson.dumps(body), why="unkeyed headers"),
        Sent("POST", route, [*HEADERS, ("Content-Encoding", "gzip")],
             gzip.compress(orjson.dumps(body)), why="gzip"),
    ]  # fmt: skip


HEADERS = [("Authorization", AUTH), ("Content-Type", "application/json")]


async def no_crossing(port: Ports, rnd: random.Random, count: int) -> None:
    """Accepted requests, each sent again changed in meaning: never a HIT; sent as they were,
    or spelled otherwise: a HIT with the bytes of their first answer."""
    firsts: list[tuple[str, dict[str, Any], Got]] = []
    for index in range(count):
        route = rnd.choice(CACHED)
        body = {**valid_base(route, f"c{index}-{rnd.randrange(10**9)}"), "x_fuzz_nonce": "z"}
        for _ in range(rnd.randrange(3)):
            body[rnd.choice(KNOWN[4:])] = scalar(rnd)
        if "embeddings" not in route and rnd.random() < 0.3:
            body["stream"] = True
        sent = Sent("POST", route, HEADERS, orjson.dumps(body), why="cross")
        got = (await exchange(port, [sent]))[0]
        check(sent, got)
        if got.status == 200 and got.headers.get("x-repro-cache") == "MISS":
            firsts.append((route, body, got))
    assert len(firsts) >= count // 4, "too few accepted requests to compare"
    for route, body, first in firsts:
        key = first.headers["x-repro-key"]
        others = changed(route, body)
        for sent, got in zip(others, await fire(port, others), strict=True):
            check(sent, got)
            assert got.headers.get("x-repro-cache") != "HIT", (sent.why, route, sent.body)
            assert got.headers.get("x-repro-key") != key, (sent.why, route, sent.body)
        for sent in same(route, body):
            again = (await exchange(port, [sent]))[0]
            assert again.headers.get("x-repro-cache") == "HIT", (sent.why, route, body)
            assert again.body == first.body, (sent.why, route, body)


def said(body: bytes) -> Any:
    """What an answer says, without the ids and times each upstream call makes anew."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body  # a stream, replayed whole
    if not isinstance(answer, dict):
        return answer
    if "choices" in answer:
        return [c.get("message", {}).get("content") or c.get("text") for c in answer["choices"]]
    if "data" in answer:
        return [item.get("embedding") for item in answer["data"]]
    return [item.get("content") for item in answer.get("output", ())]


async def storm(port: Ports, rnd: random.Random, count: int) -> None:
    """Requests three times each, all at once, from a few tenants: each answer says what its
    own request, asked alone afterwards, is answered (seeded, the sim's text is a function of
    the body), under the same key: no answer lands on another request, however misses
    coalesce."""
    requests = []
    for index in range(count):
        route = rnd.choice(CACHED)
        body = {**valid_base(route, f"storm{index}-{rnd.randrange(10**9)}")}
        if rnd.random() < 0.5:
            body["temperature"] = rnd.choice([0, 0.5, 1])
        tenant = rnd.choice([AUTH, "Bearer sk-t1", "Bearer sk-t2"])
        sent = Sent("POST", route, [("Authorization", tenant)], orjson.dumps(body), why="storm")
        requests += [sent] * 3
    rnd.shuffle(requests)
    answers = await fire(port, requests, width=30)
    alone: dict[int, Got] = {}
    for sent, got in zip(requests, answers, strict=True):
        if id(sent) not in alone:
            alone[id(sent)] = (await exchange(port, [sent]))[0]
        own = alone[id(sent)]
        assert got.headers.get("x-repro-key") == own.headers.get("x-repro-key"), sent.body
        assert (got.status, said(got.body)) == (own.status, said(own.body)), sent.body


UNREAD = [  # headers refused before the body is read
    ("Content-Encoding", "br"),
    ("X-Note", "\u20ac"),
    ("Host", "evil.example"),
    ("Connection", "Authorization"),
    ("Cache-Control", "only-if-cached, no-store"),
]


async def pipelined(port: Ports, rnd: random.Random) -> None:
    """Requests answered alone first, then written at once on one connection: the same
    answers (status, key), complete and in order."""
    requests = []
    for index in range(12):
        route = rnd.choice(CACHED[:4])
        body = fuzzed_body(rnd, route, f"p{index}") if index % 3 else valid_base(route, "pipe")
        body["stream"] = "embeddings" not in route and rnd.random() < 0.3
        raw = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
        requests.append(Sent("POST", route, [("Authorization", AUTH)], raw, why="pipe"))
        if index % 4 == 1:  # refused before its body is read: the body must not be the next
            early = rnd.choice(UNREAD)
            requests.append(Sent("POST", route, [("Authorization", AUTH), early], raw, why="early"))
    alone = [(await exchange(port, [r]))[0] for r in requests]
    together = await exchange(port, requests)
    for sent, a, b in zip(requests, alone, together, strict=True):
        check(sent, b)
        assert (a.status, a.headers.get("x-repro-key")) == (b.status, b.headers.get("x-repro-key"))


def log_problems(log: Path) -> list[str]:
    bad = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            bad.append(line)  # not our JSON log: a traceback printed by someone else
            continue
        if record.get("level") in ("error", "critical") or "exc" in record:
            bad.append(line[:2000])
    return bad


WRONG = ["1", 1, 1.5, True, None, [], {}, {"type": 1}, "x" * 5000, -(2**63)]


def sweep(rnd: random.Random) -> list[Sent]:
    """Every known parameter, on every kind of cached route, given a value of another type."""
    out = []
    for route in [*CACHED[:4], CACHED[4]]:
        for name in KNOWN:
            body = {**valid_base(route, f"s-{name}"), name: rnd.choice(WRONG)}
            raw = orjson.dumps(body)
            out.append(Sent("POST", route, HEADERS, raw, why="wrong type " + name))
    return out


def large(rnd: random.Random) -> list[Sent]:
    """Bodies over 1 MiB, read in the proxy's child process: its refusals must come back as
    ours, not as a failure to carry them across."""
    pad = "p" * (1 << 20)
    out = []
    for name in ("stream", "seed", "background", "model", "x_nonce"):
        route = "/v1/responses" if name == "background" else "/v1/chat/completions"
        body = {**valid_base(route, pad), name: rnd.choice(WRONG)}
        out.append(Sent("POST", route, HEADERS, orjson.dumps(body), why="large " + name))
    for raw in (b'{"a":"' + pad.encode() + b'"', b'{"a":"' + pad.encode() + b'\xff"}'):
        out.append(Sent("POST", CACHED[0], HEADERS, raw, why="large bytes"))
    return out


async def campaign(
    port: Ports, seed: int, count: int, systematic: bool = False, answers: bool = True
) -> None:
    rnd = random.Random(seed)
    requests = generate(rnd, count) + large(rnd)
    if systematic:
        requests += sweep(rnd)
    failures = []
    for sent, got in zip(requests, await fire(port, requests), strict=True):
        try:
            check(sent, got)
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
    assert failures == []
    await pipelined(port, rnd)
    if answers:  # replay mode answers nothing it has not stored
        await no_crossing(port, rnd, count // 10)
        await storm(port, rnd, count // 10)
    for each in (port.openai, port.azure):
        health = (await exchange(Ports(each, each), [Sent("GET", "/healthz", [])]))[0]
        assert health.status == 200


PASSES = {  # name: (store, flags, requests)
    "memory": ("memory", (), 400),
    "redis": ("redis", (), 300),
    "enforce-off": ("memory", ("--enforce", "off"), 300),
    "replay": ("memory", ("--cache-mode", "replay"), 200),
}


@pytest.mark.parametrize("name", list(PASSES))
def test_a_hostile_client_gets_only_4xx_in_openai_shape_and_never_anothers_answer(
    start_proxy: ProxyFactory,
    sim: Sim,
    name: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    store, flags, count = PASSES[name]
    if store == "redis":
        flags = ("--store", request.getfixturevalue("redis_url"), "--secret", "s" * 16)
    logs = [tmp_path / "openai.log", tmp_path / "azure.log"]
    with logs[0].open("wb") as first, logs[1].open("wb") as second:
        openai = start_proxy(*flags, stderr=first)
        azure = start_proxy(*flags, stderr=second, upstream=sim.url)
        ports = Ports(openai.port, azure.port)
        passes = campaign(ports, SEED + len(name), count, name == "memory", name != "replay")
        asyncio.run(passes)
    assert [problem for log in logs for problem in log_problems(log)] == []
    if name == "replay":  # whatever a client sends, replay mode never calls the upstream
        assert sim.requests() == []


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/v1/chat/completions", {**valid_base("chat", "one-oh"), "stream": True}),
        ("/v1/models", None),  # a pass-through
    ],
    ids=["stream", "pass-through"],
)
def test_an_answer_of_unknown_length_to_an_http_1_0_client_ends_with_its_connection(
    start_proxy: ProxyFactory, target: str, body: dict[str, Any] | None
) -> None:
    """HTTP/1.0 has no chunks: such an answer ends where the connection does. Kept open for a
    client that asked for keep-alive, it never ended (until the keep-alive timeout, 75 s)."""
    proxy = start_proxy()
    raw = orjson.dumps(body) if body is not None else b""
    method = "POST" if body is not None else "GET"
    headers = [("Authorization", AUTH), ("Connection", "keep-alive")]
    sent = Sent(method, target, headers, raw, "HTTP/1.0")

    async def ask() -> Got:
        async with asyncio.timeout(10):
            return (await exchange(Ports(proxy.port, proxy.port), [sent]))[0]

    got = asyncio.run(ask())
    assert got.status == 200 and "content-length" not in got.headers
    assert got.body.endswith(b"[DONE]\n\n" if body is not None else b"}")


@pytest.mark.parametrize(
    ("version", "target"),
    [
        ("HTTP/1.0", "/v1/chat/completions"),
        ("HTTP/1.0", "/v1/files"),
        ("HTTP/1.0", "/elsewhere"),
        ("HTTP/2.0", "/v1/chat/completions"),
    ],
)
def test_a_request_in_chunks_its_version_cannot_carry_is_refused_and_its_connection_closed(
    start_proxy: ProxyFactory, sim: Sim, version: str, target: str
) -> None:
    """HTTP/1.0 has no chunked coding (RFC 9112 6.1: such framing is faulty), and an `HTTP/2.0`
    request line is no HTTP/1 a reader in front frames alike (nginx refuses it). A reader that
    knows no chunks takes the body for empty and the chunks for the next request; the proxy
    read them as the body, answered, and served the request smuggled after them."""
    proxy = start_proxy()
    body = orjson.dumps(valid_base("chat", "chunks-in-1.0"))
    head = f"POST {target} {version}\r\nAuthorization: {AUTH}\r\nConnection: keep-alive\r\n"
    sent = head.encode() + b"Transfer-Encoding: chunked\r\n\r\n"
    sent += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    sent += b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + AUTH.encode()
    _, head, rest = raw_answer(proxy.port, sent + b"\r\n\r\n")  # to the connection's end
    assert head.startswith(version.encode() + b" 400 ")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    assert rest[length:] == b""  # nothing answered after it: the connection closed
    assert orjson.loads(rest[:length])["error"]["code"] == "invalid_http"
    assert sim.requests() == []


def test_embeddings_of_a_model_never_turn_its_chats_into_misses(start_proxy: ProxyFactory) -> None:
    """A server that both chats and embeds with one model reports a fingerprint on chats and
    none on embeddings. Tracked as one history, each embedding (any tenant's) was a rotation:
    under `follow`, every stored chat answer of the model stopped being served."""
    proxy = start_proxy()
    chat = Sent("POST", CACHED[0], HEADERS, orjson.dumps(valid_base("chat", "thrash")))
    embed = orjson.dumps({"model": "gpt-4o-mini", "input": "thrash"})
    other = [("Authorization", "Bearer sk-other"), ("Content-Type", "application/json")]
    embedding = Sent("POST", "/v1/embeddings", other, embed)
    ports = Ports(proxy.port, proxy.port)

    async def run() -> list[str | None]:
        seen = []
        for sent in (chat, embedding, chat, embedding, chat):
            got = (await exchange(ports, [sent]))[0]
            assert got.status == 200
            seen.append(got.headers.get("x-repro-cache"))
        return seen

    assert asyncio.run(run()) == ["MISS", "MISS", "HIT", "HIT", "HIT"]
    assert proxy.metric("repro_fingerprint_changes_total", model="gpt-4o-mini") <= 1


def test_a_query_that_hides_its_api_version_from_azure_never_gets_anothers_answer(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """Azure splits a query at `&` alone: `foo=1;api-version=V&api-key=K` names no api-version
    there (the upstream refuses it). Keyed without its credential, cut at `;` too, it read as
    `foo=1&api-version=V` and was served that request's stored answer."""
    proxy = start_proxy(upstream=sim.url)
    route = "/openai/deployments/dep-1/chat/completions"
    body = orjson.dumps(valid_base("chat", "semicolon"))
    ports = Ports(proxy.port, proxy.port)

    def ask(query: str) -> Sent:
        return Sent("POST", f"{route}?{query}", HEADERS, body, why="query")

    async def run() -> tuple[Got, Got]:
        first = (await exchange(ports, [ask("foo=1&api-version=2024-10-21&api-key=K")]))[0]
        hidden = (await exchange(ports, [ask("foo=1;api-version=2024-10-21&api-key=K")]))[0]
        return first, hidden

    first, hidden = asyncio.run(run())
    assert first.status == 200
    assert hidden.status == 400 and hidden.headers.get("x-repro-cache") != "HIT"
    assert hidden.error()["code"] == "invalid_value"


@pytest.mark.parametrize("target", ["/v1/chat/completions", "/v1/models", "/openai/responses"])
def test_an_expectation_besides_100_continue_is_refused_in_openai_shape(
    start_proxy: ProxyFactory, sim: Sim, target: str
) -> None:
    """aiohttp answered it itself, in plain text echoing the header (`Unknown Expect: …`), on
    the proxy's own routes; 100-continue still gets its interim answer first."""
    proxy = start_proxy()
    body = orjson.dumps(valid_base("chat", "expect"))
    ports = Ports(proxy.port, proxy.port)
    refused = Sent("POST", target, [*HEADERS, ("Expect", "<b>sk-echo</b>")], body)
    ok = Sent("POST", CACHED[0], [*HEADERS, ("Expect", "100-Continue")], body)
    got, fine = asyncio.run(exchange(ports, [refused])), asyncio.run(exchange(ports, [ok]))
    assert got[0].status == 417 and b"sk-echo" not in got[0].body
    check(refused, got[0])
    assert got[0].error()["code"] == "invalid_header"
    assert fine[0].status == 200
    assert [r["path"] for r in sim.requests()] == [CACHED[0]]
