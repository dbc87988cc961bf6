"""More attacks by a hostile upstream (or a compromised gateway in front of OpenAI), against a
real proxy process: on the pooled connections one upstream client shares between tenants, on
the waits for an answer's head (informational answers, a stream that pings and never names its
answer), on the labels an answer is stored under, and on the proxy's own side requests (the
fingerprint probe, the drift sampler). Each upstream is written for the attack
(tests/hostile.py)."""

from __future__ import annotations

import asyncio
import threading

import httpx
import orjson
import pytest

from bench.procs import peak_rss_kib, settled
from tests.fixtures_procs import ProxyFactory
from tests.hostile import STREAM, Received, Scripted, Writer, completion, fixed, http_answer

WAIT = 20.0


def chat(content: str) -> bytes:
    return orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    )


def asked_by(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def content_of(response: httpx.Response) -> str:
    return str(response.json()["choices"][0]["message"]["content"])


def test_an_answer_nobody_asked_for_never_answers_the_next_request_on_its_connection(
    start_proxy: ProxyFactory,
) -> None:
    """The upstream answers tenant A's request, then, once the connection is back in the pool,
    sends a second answer of its own making. aiohttp parsed it and queued it on the idle
    connection, and tenant B's next request sent on that connection read it as its answer
    (served and stored under B's key, B's request never answered by anyone). Bytes on an idle
    connection now close it: B's request goes out on another and gets its own answer."""
    forged = threading.Event()

    async def answer(writer: asyncio.StreamWriter, request: Received) -> None:
        content = orjson.loads(request.body)["messages"][0]["content"]
        writer.write(http_answer(completion(f"answer to {content}"), "Content-Type: text/json"))
        await writer.drain()
        if content == "first":  # A's answer is read whole (and its connection pooled) by now
            await asyncio.sleep(0.2)
            writer.write(http_answer(completion("FORGED"), "Content-Type: application/json"))
            await writer.drain()
            forged.set()

    with Scripted(answer) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        with httpx.Client(base_url=proxy.url, timeout=WAIT) as client:
            first = client.post(
                "/v1/chat/completions", content=chat("first"), headers=asked_by("sk-a")
            )
            assert content_of(first) == "answer to first"
            assert forged.wait(WAIT)
            # The forged bytes were in the proxy's socket when `forged` was set (loopback): one
            # round trip through the proxy's loop, and they have been read.
            assert client.get("/healthz").status_code == 200
            second = client.post(
                "/v1/chat/completions", content=chat("second"), headers=asked_by("sk-b")
            )
            again = client.post(
                "/v1/chat/completions", content=chat("second"), headers=asked_by("sk-b")
            )
    assert content_of(second) == "answer to second"
    assert again.headers["X-Repro-Cache"] == "HIT"
    assert content_of(again) == "answer to second"
    assert [orjson.loads(r.body)["messages"][0]["content"] for r in upstream.received] == [
        "first",
        "second",
    ]


def test_a_huge_answer_to_the_fingerprint_probe_is_not_read_whole_nor_parsed_on_the_loop(
    start_proxy: ProxyFactory,
) -> None:
    """The probe asks for one token, and read whatever came (up to the 32 MiB bound of the
    proxy's side requests), then parsed it on the event loop: 32 MiB of numbers are a quarter
    of a GiB of objects, built while every client waits, once per probed model per interval.
    A one-token answer is small: one larger is a failed probe, read no further."""
    probes = threading.Event()
    asked: list[str] = []
    padding = b"[" + b"0.5," * (7 * 1024 * 1024) + b"0.5]"  # within the 32 MiB bound

    async def answer(writer: asyncio.StreamWriter, request: Received) -> None:
        if request.headers.get("authorization") != "Bearer sk-probe":
            body = completion("a client's answer")
        else:
            asked.append(request.request_line)
            if len(asked) >= 2:  # probes run one after another: the first one is done with
                probes.set()
            body = completion("pong")[:-1] + b',"padding":' + padding + b"}"
        writer.write(http_answer(body, "Content-Type: application/json"))
        await writer.drain()

    with Scripted(answer) as upstream:
        proxy = start_proxy(
            "--probe-interval", "0.3", "--probe-key", "sk-probe", upstream=upstream.v1
        )
        before = peak_rss_kib(proxy.proc.pid)
        first = httpx.post(
            proxy.v1 + "/chat/completions",
            content=chat("x"),
            headers=asked_by("sk-a"),
            timeout=WAIT,
        )
        assert first.status_code == 200
        assert probes.wait(WAIT)
        rise_mib = (peak_rss_kib(proxy.proc.pid) - before) / 1024
    assert rise_mib < 40, f"peak RSS rose {rise_mib:.0f} MiB"


def test_an_answer_labelled_with_bytes_that_are_not_utf8_is_relayed_not_a_500(
    start_proxy: ProxyFactory,
) -> None:
    """`Content-Type: application/json<FF>`: the HTTP client reads the byte as a lone surrogate,
    which the entry's JSON cannot hold; the write failed, and the client got a 500 for an
    answer the upstream gave. Such an answer is passed on as it came, and not stored."""
    body = completion("labelled oddly")
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\xff\r\n"
    answer = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    with Scripted(fixed(answer)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        answers = [
            httpx.post(proxy.v1 + path, content=chat("x"), headers=asked_by("sk-a"), timeout=WAIT)
            for path in ("/chat/completions", "/chat/completions", "/embeddings")
        ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.headers["X-Repro-Cache"] for a in answers] == ["MISS", "MISS", "MISS"]
    assert {content_of(a) for a in answers} == {"labelled oddly"}
    assert len(upstream.received) == 3


def informational_only(count: int, pause: float, done: threading.Event) -> Writer:
    """Answer with `count` informational answers (103), one every `pause` seconds, and no
    final one (then set `done`)."""

    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        for _ in range(count):
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(pause)
        done.set()

    return write


@pytest.mark.parametrize(
    ("path", "body"),
    [("/chat/completions", STREAM), ("/files", b"{}")],
    ids=["stream", "pass-through"],
)
def test_informational_answers_without_end_are_bounded_by_the_upstream_timeout(
    start_proxy: ProxyFactory, path: str, body: bytes
) -> None:
    """A stream request's (or a pass-through's) head waits only on silences, and aiohttp reads
    past any number of 1xx answers, each a byte that breaks the silence: a 103 every 200 ms
    held the client for as long as the upstream kept them coming. They carry nothing of the
    answer: the final one is due within --upstream-timeout of the first."""
    done = threading.Event()
    with Scripted(informational_only(100, 0.2, done)) as upstream:
        proxy = start_proxy("--upstream-timeout", "1", upstream=upstream.v1)
        answer = httpx.post(proxy.v1 + path, content=body, headers=asked_by("sk-a"), timeout=WAIT)
        assert not done.is_set()  # answered while the upstream was still sending 103s
    assert (answer.status_code, answer.json()["error"]["code"]) == (504, "upstream_timeout")


def test_an_answer_of_an_odd_shape_is_still_checked_for_drift(start_proxy: ProxyFactory) -> None:
    """`"tool_calls": 5` beside the message's content (or a Responses output item whose
    `content` is a number) is stored, as clients read the text; the drift check iterated the
    field and died on it, counted nowhere: an upstream answering so blinded --verify-rate."""
    answer = orjson.loads(completion("odd"))
    answer["choices"][0]["message"]["tool_calls"] = 5
    body = orjson.dumps(answer)
    with Scripted(fixed(http_answer(body, "Content-Type: application/json"))) as upstream:
        proxy = start_proxy("--verify-rate", "1", upstream=upstream.v1)
        asked = [
            httpx.post(
                proxy.v1 + "/chat/completions", content=chat("q"), headers=asked_by("sk-a")
            ).headers["X-Repro-Cache"]
            for _ in range(2)
        ]
        assert asked == ["MISS", "HIT"]
        results = ("same", "differs", "rotated", "error")

        def verified() -> dict[str, float]:
            return {
                r: proxy.metric("repro_verify_total", model="gpt-4o-mini", result=r)
                for r in results
            }

        counted = settled(verified, lambda found: sum(found.values()) >= 1)
    assert counted["same"] == 1, counted


def test_a_client_that_left_before_its_head_is_not_held_for_by_a_pinging_upstream(
    start_proxy: ProxyFactory,
) -> None:
    """A stream of `: ping` comments and no event: the proxy holds the client's head back for a
    first frame, so the client gives up and leaves, and nothing written to it ever showed that
    it had. The proxy read on for as long as the upstream pinged, holding the request, its slot
    under --max-connections and an upstream connection; now it reads on for --upstream-timeout
    after the client left, as for one that left mid-stream."""
    done = threading.Event()

    async def pings(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(150):  # 30 s of pings
            writer.write(b"8\r\n: ping\n\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)
        done.set()

    with Scripted(pings) as upstream:
        proxy = start_proxy("--upstream-timeout", "2", upstream=upstream.v1)
        with pytest.raises(httpx.ReadTimeout):  # no head: the client leaves
            httpx.post(
                proxy.v1 + "/chat/completions", content=STREAM, headers=asked_by("sk-a"), timeout=1
            )
        still_open = settled(lambda: upstream.open_now, lambda n: n == 0, within=10)
        assert not done.is_set()
    assert still_open == 0
