"""End to end: a large request body, and a large answer (to a client's request, to a key check,
to the drift sampler's re-ask), are parsed off the event loop, so that one client's 15 MiB body,
or an upstream's 15 MiB answer, cannot stall every other request the process is serving (here,
/healthz).

The large bodies are posted with `only-if-cached`: the proxy parses and keys each one, then
answers 504 without calling the upstream, whose own parsing would otherwise take the shared
cores from the proxy."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable

import httpx
import orjson

from tests.fixtures_procs import ProxyFactory, Sim
from tests.hostile import Received, Scripted, fixed, http_answer

CHAT = "/v1/chat/completions"
BODIES = 4
POLL_INTERVAL = 0.005
STALL_BOUND = 0.25


def large_body(n: int) -> bytes:
    """About 15 MiB of chat in the shape that costs most to parse: many tiny values."""
    messages = [
        {"role": "user", "content": [{"type": "text", "text": f"{n}.{i}"}]} for i in range(250_000)
    ]
    return orjson.dumps({"model": "gpt-4o-mini", "messages": messages, "temperature": 0.7})


async def worst_health_latency(url: str, work: Callable[[], list[int]]) -> tuple[float, list[int]]:
    """Run `work` (requests one after another, in a thread, so that this loop only polls) while
    /healthz is polled every 5 ms; the slowest /healthz answer, and the statuses `work` got."""
    worst = 0.0
    working = asyncio.ensure_future(asyncio.to_thread(work))
    async with httpx.AsyncClient(timeout=60) as client:
        while not working.done():
            started = time.perf_counter()
            assert (await client.get(url + "/healthz")).status_code == 200
            worst = max(worst, time.perf_counter() - started)
            await asyncio.sleep(POLL_INTERVAL)
    return worst, await working


def post_all(url: str, bodies: list[bytes]) -> list[int]:
    headers = {
        "Authorization": "Bearer sk-large",
        "Content-Type": "application/json",
        "Cache-Control": "only-if-cached",
    }
    with httpx.Client(timeout=60) as client:
        return [
            client.post(url + CHAT, content=body, headers=headers).status_code for body in bodies
        ]


def test_large_bodies_do_not_stall_the_event_loop(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy()
    bodies = [large_body(n) for n in range(BODIES)]
    assert all(14 * 2**20 < len(b) < 16 * 2**20 for b in bodies)
    worst, statuses = asyncio.run(
        worst_health_latency(proxy.url, lambda: post_all(proxy.url, bodies))
    )
    assert statuses == [504] * BODIES  # parsed, keyed, and not in the cache
    # Parsed on the loop, each body stalled it 830 to 860 ms; off it, the worst /healthz took
    # 20 to 65 ms on a busy 2-core machine (the same as with no large bodies at all).
    assert worst < STALL_BOUND


def test_a_large_body_refused_off_the_loop_gets_the_same_error_as_a_small_one(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy()
    padding = "x" * (2 * 2**20)
    broken = b'{"model": "gpt-4o-mini", "messages": [], "pad": "' + padding.encode() + b'"'
    named = orjson.dumps({"model": "gpt-4o-mini", "messages": [], "pad": padding})
    headers = {"Authorization": "Bearer sk-large", "Content-Type": "application/json"}
    with httpx.Client(timeout=30) as client:
        invalid = client.post(proxy.url + CHAT, content=broken, headers=headers)
        too_long = client.post(
            proxy.url + CHAT, content=named, headers={**headers, "X-Repro-Namespace": "n" * 300}
        )
    assert invalid.status_code == 400
    assert invalid.json()["error"]["code"] == "invalid_json"
    assert too_long.status_code == 400
    assert too_long.json()["error"]["param"] == "X-Repro-Namespace"
    assert sim.llm_requests() == []


def large_answer() -> bytes:
    """About 15 MiB of a chat completion in the shape that costs most to parse: its logprobs,
    many tiny values."""
    tokens = [
        {"token": f"t{i}", "logprob": -0.5, "bytes": [116], "top_logprobs": []}
        for i in range(240_000)
    ]
    choice = {"index": 0, "message": {"role": "assistant", "content": "x"}, "logprobs": {}}
    choice["logprobs"] = {"content": tokens}
    return orjson.dumps(
        {
            "id": "chatcmpl-large",
            "object": "chat.completion",
            "model": "gpt-4o-mini",
            "system_fingerprint": "fp_large",
            "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 240_000, "total_tokens": 240_001},
        }
    )


def ask_all(url: str, times: int) -> list[int]:
    """Ask `times` distinct questions one after another; their statuses."""
    with httpx.Client(timeout=60, headers={"Authorization": "Bearer sk-large"}) as client:
        return [
            client.post(
                url + CHAT,
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{n}"}]},
            ).status_code
            for n in range(times)
        ]


def test_large_answers_do_not_stall_the_event_loop(start_proxy: ProxyFactory) -> None:
    """A whole answer is read for what the proxy stores of it (an answer or not, fingerprint,
    usage): an upstream's 15 MiB of tiny values is read off the loop, as a client's body is."""
    answer = large_answer()
    assert 14 * 2**20 < len(answer) < 16 * 2**20
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    with Scripted(fixed(head % len(answer) + answer)) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        worst, statuses = asyncio.run(
            worst_health_latency(proxy.url, lambda: ask_all(proxy.url, BODIES))
        )
        assert statuses == [200] * BODIES
        stored = httpx.get(proxy.url + "/metrics", timeout=10).text
    assert 'repro_fingerprint_info{fingerprint="fp_large",model="gpt-4o-mini"} 1.0' in stored
    # Read on the loop, the worst /healthz took 290 to 310 ms here; off it, 35 to 40 ms.
    assert worst < STALL_BOUND


def model_list() -> bytes:
    """About 15 MiB of a gateway's model list, many tiny values: what a key check reads."""
    models = [{"id": f"{i:06d}"} for i in range(950_000)]
    return orjson.dumps({"object": "list", "data": models})


def small_answer() -> bytes:
    message = {"role": "assistant", "content": "small"}
    return orjson.dumps(
        {
            "id": "chatcmpl-small",
            "object": "chat.completion",
            "model": "gpt-4o-mini",
            "system_fingerprint": "fp_large",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


JSON_HEAD = "Content-Type: application/json"


def test_key_checks_read_a_large_model_list_off_the_loop(start_proxy: ProxyFactory) -> None:
    """In `shared` scope a key the proxy has not seen is checked against the upstream's model
    list before it reads a HIT; a gateway routing to every model lists hundreds of thousands."""
    listed = model_list()
    assert 14 * 2**20 < len(listed) < 16 * 2**20

    async def upstream(writer: asyncio.StreamWriter, request: Received) -> None:
        if "sk-repro-" in request.headers.get("authorization", ""):  # made-up: refused
            writer.write(http_answer(b'{"error": {"message": "bad key"}}', status="401 No"))
        elif request.request_line.startswith("GET /v1/models"):
            writer.write(http_answer(listed, JSON_HEAD))
        else:
            writer.write(http_answer(small_answer(), JSON_HEAD))
        await writer.drain()

    def others_ask() -> list[int]:
        question = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "0"}]}
        with httpx.Client(timeout=60) as client:
            answers = [
                client.post(proxy.url + CHAT, json=question, headers={"Authorization": key})
                for key in [f"Bearer sk-other-{n}" for n in range(BODIES)]
            ]
        return [200 if a.headers.get("X-Repro-Cache") == "HIT" else a.status_code for a in answers]

    with Scripted(upstream) as scripted:
        proxy = start_proxy("--cache-scope", "shared", upstream=scripted.v1)
        assert ask_all(proxy.url, 1) == [200]  # stored by the first key
        worst, statuses = asyncio.run(worst_health_latency(proxy.url, others_ask))
    assert statuses == [200] * BODIES  # each key checked, and served the stored answer
    # Judged on the loop, the worst /healthz took 360 to 400 ms here; off it, 20 to 45 ms.
    assert worst < STALL_BOUND


def test_the_drift_sampler_reads_a_large_fresh_answer_off_the_loop(
    start_proxy: ProxyFactory,
) -> None:
    """orjson holds the GIL while it parses, so a fresh answer parsed in a thread stalls the
    loop as much as one parsed on it."""
    answers = iter([small_answer(), large_answer()])

    async def upstream(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(http_answer(next(answers), JSON_HEAD))
        await writer.drain()

    def verified() -> list[int]:
        statuses = ask_all(proxy.url, 1)  # a HIT, re-asked in the background
        deadline = time.monotonic() + 30
        while proxy.metric("repro_verify_total", model="gpt-4o-mini", result="differs") < 1:
            assert time.monotonic() < deadline, "the re-ask was never compared"
            time.sleep(0.05)
        return statuses

    with Scripted(upstream) as scripted:
        proxy = start_proxy("--verify-rate", "1", upstream=scripted.v1)
        assert ask_all(proxy.url, 1) == [200]
        worst, statuses = asyncio.run(worst_health_latency(proxy.url, verified))
    assert statuses == [200]
    # Parsed in a thread, the worst /healthz took 290 to 310 ms here; off it, 25 to 55 ms.
    assert worst < STALL_BOUND


def nested(depth: int = 120, below: int = (1 << 20) - 8192) -> bytes:
    """Empty arrays nested `depth` deep, again and again, in about `below` bytes: what costs
    most to parse per byte (orjson makes each a list, the canonical walk visits each)."""
    unit = b"[" * depth + b"]" * depth + b","
    return b"[" + unit * (below // len(unit)) + b"0]"


def test_a_body_under_the_size_bound_nested_deep_is_parsed_off_the_loop(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """Below OFF_LOOP_BODY a body was parsed on the loop whatever its shape: a MiB of nested
    empty arrays held it 600 ms, sent without credentials, and four clients sending it again
    and again made every other request (HITs included) wait seconds."""
    proxy = start_proxy()
    head = b'{"model": "gpt-4o-mini", "messages": [], "x": '
    bodies = [head + nested() + b', "n": %d}' % n for n in range(BODIES)]
    assert all(len(body) < 2**20 for body in bodies)

    def post_keyless() -> list[int]:
        headers = {"Content-Type": "application/json", "Cache-Control": "only-if-cached"}
        with httpx.Client(timeout=60) as client:
            return [
                client.post(proxy.url + CHAT, content=b, headers=headers).status_code
                for b in bodies
            ]

    worst, statuses = asyncio.run(worst_health_latency(proxy.url, post_keyless))
    assert statuses == [504] * BODIES  # parsed, keyed, and not in the cache
    # On the loop, the worst /healthz took 600 to 700 ms; off it, about as long as without.
    assert worst < STALL_BOUND
    assert sim.llm_requests() == []


def test_an_upstreams_answer_or_frame_nested_deep_is_not_parsed_on_the_loop(
    start_proxy: ProxyFactory,
) -> None:
    """A whole answer under OFF_LOOP_BODY is read in the child when it nests many arrays; a
    stream's frame that does is relayed and not stored, never parsed on the loop."""
    deep = nested(below=(1 << 20) - 65536)
    whole = orjson.loads(small_answer())
    whole["choices"][0]["logprobs"] = {"deep": orjson.Fragment(deep)}
    frame = {"id": "c", "object": "chat.completion.chunk", "x": orjson.Fragment(deep)}
    frame["choices"] = [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]
    stream = b"data: " + orjson.dumps(frame) + b"\n\ndata: [DONE]\n\n"
    assert len(orjson.dumps(whole)) < 2**20 and len(stream) < 2**20

    async def upstream(writer: asyncio.StreamWriter, request: Received) -> None:
        if b'"stream":true' in request.body.replace(b" ", b""):
            writer.write(http_answer(stream, "Content-Type: text/event-stream"))
        else:
            writer.write(http_answer(orjson.dumps(whole), JSON_HEAD))
        await writer.drain()

    def ask_both() -> list[int]:
        with httpx.Client(timeout=60, headers={"Authorization": "Bearer sk-deep"}) as client:
            asked = []
            for n in range(BODIES):
                for streamed in (False, True):
                    question = {"model": "m", "messages": [{"role": "user", "content": f"{n}"}]}
                    answer = client.post(proxy.url + CHAT, json={**question, "stream": streamed})
                    asked.append(answer.status_code)
                    assert len(answer.content) > 2**19
            again = client.post(proxy.url + CHAT, json={**question, "stream": True})
            assert again.headers["X-Repro-Cache"] == "MISS"  # the deep frame: not stored
            assert again.content == stream
            return asked

    with Scripted(upstream) as scripted:
        proxy = start_proxy(upstream=scripted.v1)
        worst, statuses = asyncio.run(worst_health_latency(proxy.url, ask_both))
    assert statuses == [200] * 2 * BODIES
    assert worst < STALL_BOUND


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as listed:
        return [int(child) for child in listed.read().split()]


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return sum(int(value) for value in stat.read().rpartition(")")[2].split()[11:13])


def test_a_body_whose_parsing_process_died_gets_a_503_to_retry(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """The child parsing a large body killed (as the OOM killer would): the client got a 500
    internal_error and the log a traceback; it is the proxy's capacity, worth a retry."""
    proxy = start_proxy("--max-body", "64MiB")
    headers = {"Authorization": "Bearer sk-large", "Content-Type": "application/json"}
    with httpx.Client(timeout=60, headers=headers) as client:
        warm = client.post(proxy.url + CHAT, content=large_body(0))  # the child is up
        assert warm.status_code == 200
        (child,) = [c for c in children(proxy.proc.pid) if b"spawn_main" in cmdline(c)]
        slow = orjson.dumps(
            {"model": "m", "messages": [{"role": "user", "content": "a"}] * 600_000}
        )
        answers: list[httpx.Response] = []
        asking = threading.Thread(
            target=lambda: answers.append(client.post(proxy.url + CHAT, content=slow))
        )
        before = cpu_ticks(child)
        asking.start()
        for _ in range(200):  # until the child is at work on it, 10 s at most
            if cpu_ticks(child) - before > 5:
                break
            time.sleep(0.05)
        os.kill(child, signal.SIGKILL)
        asking.join(60)
        (answer,) = answers
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "too_many_bodies"
        assert answer.headers["Retry-After"] == "1"
        again = client.post(proxy.url + CHAT, content=large_body(1))  # a new child takes it
        assert again.status_code == 200


def cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as line:
        return line.read()
