"""The pass-through floor and the byte relay of bench/floors.py: what the streaming first byte
is measured against.

Their figures mean something only if they relay a stream as the frames come, as the proxy does;
one that buffered the answer would make the proxy look better than it is.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from tests.fixtures_procs import Sim, free_port

ROOT = Path(__file__).resolve().parents[2]
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
AUTH = {"Authorization": "Bearer sk-floor"}


@contextmanager
def started(kind: str, upstream: str, ready: str | None) -> Iterator[str]:
    """`bench/floors.py KIND` on a free port until the block ends; its base URL once `ready`
    (a path) answers, or (None) once the port takes connections."""
    port = free_port()
    argv = [sys.executable, "bench/floors.py", kind, "--port", str(port)]
    proc = subprocess.Popen(
        [*argv, "--upstream", upstream],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if ready is None:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                else:
                    httpx.get(url + ready, timeout=1).raise_for_status()
                break
            except (httpx.TransportError, OSError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(params=["passthrough", "relay"])
def floor(request: pytest.FixtureRequest, sim: Sim) -> Iterator[str]:
    ready = "/_floor/stats" if request.param == "passthrough" else "/_sim/settings"
    with started(request.param, sim.v1, ready) as url:
        yield url + "/v1"


def test_a_stream_is_relayed_as_its_frames_come(sim: Sim, floor: str) -> None:
    sim.settings(chunk_delay=0.2)  # four words, each 0.2 s after the one before
    arrivals: list[float] = []
    received = b""
    started = time.monotonic()
    with httpx.stream(
        "POST", floor + "/chat/completions", json={**BODY, "stream": True}, headers=AUTH
    ) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for chunk in response.iter_raw():
            arrivals.append(time.monotonic() - started)
            received += chunk
    assert received.endswith(b"data: [DONE]\n\n")
    assert len(arrivals) >= 4
    assert arrivals[-1] - arrivals[0] >= 0.5  # the first frame came long before the last


def test_a_buffered_answer_is_passed_whole(sim: Sim, floor: str) -> None:
    response = httpx.post(floor + "/chat/completions", json=BODY, headers=AUTH)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert response.json()["object"] == "chat.completion"


def test_the_relay_keeps_one_connection_alive_for_many_requests(sim: Sim) -> None:
    """A client's keep-alive connection maps to one upstream connection, both ways, in order."""
    with started("relay", sim.v1, "/_sim/settings") as url, httpx.Client(base_url=url) as client:
        contents = []
        for word in ("one", "two", "three"):
            body = {**BODY, "messages": [{"role": "user", "content": word}], "seed": 1}
            response = client.post("/v1/chat/completions", json=body, headers=AUTH)
            assert response.status_code == 200
            contents.append(response.json()["choices"][0]["message"]["content"])
        assert len(set(contents)) == 3  # each answer is its own request's


def test_the_relay_closes_the_client_when_the_upstream_is_gone() -> None:
    """No upstream to connect to: the client's connection is closed at once, not left hanging."""
    upstream = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    # Closed as the request arrives, or just before: a clean end or a reset, never a hang
    # (which would end in httpx.ReadTimeout, neither of these).
    closed = pytest.raises((httpx.RemoteProtocolError, httpx.ReadError))
    with started("relay", upstream, None) as url, closed:
        httpx.post(url + "/v1/chat/completions", json=BODY, headers=AUTH, timeout=10)


def test_the_caching_floor_caches_by_canonical_body_and_fingerprint(sim: Sim) -> None:
    """`caching` does a cache's work, or its figure would flatter the proxy's distance from it:
    a seed injected, the body respelled (key order does not split the key), the answer stored
    under the fingerprint it was made with; a rotation, learned from the next miss as the proxy
    learns it, makes every answer of the old one a miss."""
    with started("caching", sim.v1, "/_floor/stats") as url:

        def ask(body: dict[str, object]) -> httpx.Response:
            return httpx.post(url + "/v1/chat/completions", json=body, headers=AUTH)

        first = ask(BODY)
        assert (first.status_code, first.headers["X-Repro-Cache"]) == (200, "MISS")
        assert orjson.loads(sim.llm_requests()[-1]["body"])["seed"] == 12345
        reordered = dict(reversed(list(BODY.items())))
        again = ask(reordered)
        assert (again.headers["X-Repro-Cache"], again.content) == ("HIT", first.content)
        sim.set_fingerprint("fp_rotated")
        assert ask({**BODY, "max_tokens": 5}).headers["X-Repro-Cache"] == "MISS"
        rotated = ask(BODY)
        assert rotated.headers["X-Repro-Cache"] == "MISS"
        assert rotated.json()["system_fingerprint"] == "fp_rotated"
        assert ask(BODY).headers["X-Repro-Cache"] == "HIT"
        assert httpx.get(url + "/_floor/stats").json() == {"miss": 3, "hit": 2}
