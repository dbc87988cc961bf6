"""Time to first byte of streamed answers: straight to `repro-proxy sim` versus through the proxy.

Starts the simulator and a proxy (`python -m proxy ...` on free loopback ports), then sends
streamed chat requests with bodies never seen before, so every proxied one is a MISS, to the sim
and to the proxy in turn (which goes first alternates). For each it measures the time from sending
the request to the first body bytes (TTFB) and to the first frame carrying content (the sim sends
a role-only frame first, then one word per frame, `--chunk-delay` apart). Then it replays some of
the proxied bodies as HITs and times those too. Prints p50/p90/p99 in milliseconds.

    python bench/stream_ttfb.py [--requests N] [--chunk-delay S] [--hits N]

The proxy's cost on a MISS is the difference between the two columns: what the proxy adds to the
first token of a stream. The processes are stopped at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
from procs import free_port, process

AUTH = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class Timing:
    first_byte: float
    first_content: float
    cache: str


def body(text: str) -> bytes:
    """A streamed chat request; the seed is explicit so both paths send the same parameters."""
    return json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": text}],
            "seed": 7,
            "max_tokens": 4,
            "stream": True,
        }
    ).encode()


def has_content(frame: bytes) -> bool:
    if not frame.startswith(b"data: {"):
        return False
    choices = json.loads(frame[len(b"data: ") :]).get("choices") or []
    return any(c.get("delta", {}).get("content") for c in choices)


def timed_stream(client: httpx.Client, payload: bytes) -> Timing:
    """Send one streamed request and read it to the end; note when the first bytes came."""
    first_byte = first_content = math.nan
    pending = b""
    started = time.perf_counter()
    with client.stream("POST", "/chat/completions", content=payload) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            now = time.perf_counter()
            if math.isnan(first_byte):
                first_byte = now - started
            if math.isnan(first_content):
                *frames, pending = (pending + chunk).split(b"\n\n")
                if any(has_content(f) for f in frames):
                    first_content = now - started
        cache = response.headers.get("X-Repro-Cache", "-")
    return Timing(first_byte, first_content, cache)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def row(name: str, values: list[float]) -> str:
    cells = "".join(f"{percentile(values, p) * 1000:10.2f}" for p in (50, 90, 99))
    return f"  {name:<28}{cells}"


def report(title: str, rows: dict[str, list[float]]) -> None:
    print(f"{title} (ms){'p50':>16}{'p90':>10}{'p99':>10}")
    for name, values in rows.items():
        print(row(name, values))


def run(requests: int, chunk_delay: float, hits: int) -> None:
    sim_port, proxy_port = free_port(), free_port()
    sim_url, proxy_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{proxy_port}"
    with ExitStack() as stack:
        stack.enter_context(
            process(
                ["sim", "--port", str(sim_port), "--chunk-delay", str(chunk_delay)],
                sim_url + "/_sim/settings",
            )
        )
        stack.enter_context(
            process(
                ["serve", "--port", str(proxy_port), "--upstream", sim_url + "/v1"],
                proxy_url + "/healthz",
            )
        )
        direct = stack.enter_context(httpx.Client(base_url=sim_url + "/v1", headers=AUTH))
        proxied = stack.enter_context(httpx.Client(base_url=proxy_url + "/v1", headers=AUTH))
        for _ in range(5):  # warm up both connection pools, and the proxy's to the sim
            timed_stream(direct, body(uuid.uuid4().hex))
            timed_stream(proxied, body(uuid.uuid4().hex))
        sim_runs: list[Timing] = []
        proxy_runs: list[Timing] = []
        sent: list[bytes] = []
        for i in range(requests):
            to_sim, to_proxy = body(uuid.uuid4().hex), body(uuid.uuid4().hex)
            if i % 2:
                sim_runs.append(timed_stream(direct, to_sim))
                proxy_runs.append(timed_stream(proxied, to_proxy))
            else:
                proxy_runs.append(timed_stream(proxied, to_proxy))
                sim_runs.append(timed_stream(direct, to_sim))
            sent.append(to_proxy)
        hit_runs = [timed_stream(proxied, payload) for payload in sent[:hits]]
    misses = sum(r.cache == "MISS" for r in proxy_runs)
    found = sum(r.cache == "HIT" for r in hit_runs)
    if misses != len(proxy_runs) or found != len(hit_runs):
        raise RuntimeError(f"expected only MISSes then HITs, got {misses} MISS, {found} HIT")
    print(
        f"{requests} streamed requests each way (interleaved, unique bodies), "
        f"{hits} HITs, sim chunk delay {chunk_delay * 1000:g} ms"
    )
    for attr, title in (("first_byte", "first byte"), ("first_content", "first content frame")):
        sim_t = [getattr(r, attr) for r in sim_runs]
        proxy_t = [getattr(r, attr) for r in proxy_runs]
        paired = [p - s for p, s in zip(proxy_t, sim_t, strict=True)]
        rows = {
            "direct to sim": sim_t,
            "through proxy (MISS)": proxy_t,
            "proxy - direct (paired)": paired,
        }
        if hit_runs:
            rows["through proxy (HIT)"] = [getattr(r, attr) for r in hit_runs]
        report(title, rows)
        print(
            "  difference of percentiles  "
            + "".join(
                f"{(percentile(proxy_t, p) - percentile(sim_t, p)) * 1000:10.2f}"
                for p in (50, 90, 99)
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="streams each way (200)")
    parser.add_argument(
        "--chunk-delay", type=float, default=0.005, help="seconds between sim frames (0.005)"
    )
    parser.add_argument("--hits", type=int, default=100, help="HITs timed afterwards (100)")
    args = parser.parse_args()
    if args.requests < 1 or not 0 <= args.hits <= args.requests or args.chunk_delay < 0:
        parser.error("need --requests >= 1, 0 <= --hits <= --requests, --chunk-delay >= 0")
    run(args.requests, args.chunk_delay, args.hits)


if __name__ == "__main__":
    main()
