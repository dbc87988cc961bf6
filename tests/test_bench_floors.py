"""The pass-through floor of bench/floors.py: what the streaming first byte is measured against.

Its figure means something only if it relays a stream as the frames come, as the proxy does;
one that buffered the answer would make the proxy look better than it is.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures_procs import Sim, free_port

ROOT = Path(__file__).resolve().parents[1]
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
AUTH = {"Authorization": "Bearer sk-floor"}


@pytest.fixture
def floor(sim: Sim) -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, "bench/floors.py", "passthrough", "--port", str(port)]
    proc = subprocess.Popen(
        [*argv, "--upstream", sim.v1],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(url + "/_floor/stats", timeout=1).raise_for_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url + "/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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
