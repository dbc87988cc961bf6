"""Soak test: a proxy under mixed load and injected faults for a bounded time, then checked.

Starts `repro-proxy sim` and `repro-proxy serve` (and, with --redis, a redis-server of its own) on
free loopback ports, drives a mixed load for --duration seconds with --concurrency clients, and
every --fault-every seconds injects an upstream fault through the sim's /_sim/faults (status 500,
status 429 with retry-after, a cut body or stream, a dropped connection) and, with --redis, freezes
Redis for a second (SIGSTOP, then SIGCONT). Meanwhile it samples the proxy's RSS and open file
descriptors from /proc. The load:

    hit        one of ~200 rotating bodies (chat, completions, embeddings): HITs once warm
    miss       a body never seen before
    stream     a streamed chat request, half from 50 rotating bodies, half unique
    no-store   Cache-Control: no-store (BYPASS)
    no-cache   Cache-Control: no-cache on a unique body (REFRESH)
    invalid    bodies that are not JSON objects, or NaN, or nested too deep (400)
    anonymous  no API key: the sim answers 401 (passed through, an error)
    passthrough GET /v1/models (route /v1/*, BYPASS)

At the end it checks, and exits 1 if any check fails:

    memory      RSS after warm-up vs. at the end of the load grows by less than --rss-limit MB
    fds         open descriptors fall back near the idle count once the load has stopped
    accounting  the sum of repro_requests_total in /metrics (all routes, all cache labels) equals
                the number of requests that got an answer (status line received); requests that
                got none (connection errors) are counted apart, and each label is compared too
    no bare 500 no answer was aiohttp's text/plain 500 (an exception the proxy did not handle)

    python bench/soak.py                                   # 60 s, memory store
    python bench/soak.py --duration 60 --concurrency 32 --redis
    python bench/soak.py --store redis://10.0.0.5:6379/0   # an existing Redis (no SIGSTOP)
    python bench/soak.py --duration 14400 --sample-every 30 --rss-limit 40   # four hours

The memory store is bounded small (--memory-bytes, 2 MiB) so that it is full within the warm-up
(default min(20 s, duration/3)) and RSS growth after it means a leak, not a filling cache. With
--store, the soak writes its entries into that store: give it a scratch database. Exit status: 0
all checks passed, 1 a check failed, 2 a missing redis-server, 130 interrupted.

Processes are stopped at the end, also on error, Ctrl-C or SIGTERM. Logs are kept in a
temporary directory, printed (tail) when a check fails, and kept with --keep-logs DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
from procs import free_port, stop, wait_redis_up, wait_until_up
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 20.0
API_KEY = "sk-soak"
CACHEABLE = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
PASSTHROUGH_ROUTE = "/v1/*"
ROTATING = 200
ROTATING_STREAMS = 50
LATENCY_SAMPLES = 20_000
WEIGHTS = {
    "hit": 48,
    "miss": 12,
    "stream": 12,
    "no-store": 8,
    "no-cache": 4,
    "invalid": 6,
    "anonymous": 2,
    "passthrough": 8,
}
FAULTS: list[dict[str, Any]] = [
    {"kind": "status", "status": 500, "count": 3},
    {"kind": "status", "status": 429, "count": 3, "headers": {"retry-after": "1"}},
    {"kind": "cut", "count": 3},
    {"kind": "drop", "count": 3},
]
INVALID_BODIES = [
    b'{"model": "gpt-4o-mini", "messages": [',
    b'{"model": "gpt-4o-mini", "temperature": NaN, "messages": []}',
    b"[1, 2, 3]",
    b'{"a":' * 200 + b"1" + b"}" * 200,
    b"\xff\xfe{}",
    b"",
]


# --------------------------------------------------------------------------------------------
# processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        stop(self.popen, grace=10)

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(line[:400] for line in text[-lines:])


def start(name: str, argv: list[str], workdir: Path) -> Proc:
    log = workdir / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPRO_")}
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    return Proc(name, popen, log)


def wait_until_proc_up(proc: Proc, url: str) -> None:
    try:
        wait_until_up(url, proc.popen, START_TIMEOUT)
    except RuntimeError as exc:
        raise RuntimeError(f"{proc.name}: {exc}\n{proc.tail()}") from None


def wait_for_redis(proc: Proc, port: int) -> None:
    try:
        wait_redis_up(port, proc.popen, START_TIMEOUT)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}:\n{proc.tail()}") from None


# --------------------------------------------------------------------------------------------
# /proc sampling


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    rss_kb: int
    fds: int
    threads: int
    sockets: dict[str, int]  # open TCP sockets by peer: clients, upstream, store, other


# Whose socket is it: filled in by main() once the ports are known.
PEERS: dict[str, str] = {}


def sample(pid: int, t0: float) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(fields["VmRSS"].split()[0])
    threads = int(fields["Threads"])
    inodes = set()
    fds = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        fds += 1
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return Sample(time.monotonic() - t0, rss_kb, fds, threads, sockets_by_peer(pid, inodes))


def sockets_by_peer(pid: int, inodes: set[str]) -> dict[str, int]:
    """Count the process's TCP sockets by the port at either end (from /proc/<pid>/net/tcp*)."""
    found: Counter[str] = Counter()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                parts = line.split()
                if parts[9] not in inodes or parts[3] == "0A":  # 0A: a listening socket
                    continue
                local, remote = int(parts[1].split(":")[1], 16), int(parts[2].split(":")[1], 16)
                found[PEERS.get(str(remote)) or PEERS.get(f"local:{local}") or "other"] += 1
    return dict(found)


# --------------------------------------------------------------------------------------------
# load


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    labels: Counter[tuple[str, str]] = field(default_factory=Counter)  # (route, cache label)
    statuses: Counter[int] = field(default_factory=Counter)
    connection_errors: Counter[str] = field(default_factory=Counter)
    broken_bodies: Counter[str] = field(default_factory=Counter)
    bare_500: int = 0
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    slowest: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    faults: Counter[str] = field(default_factory=Counter)
    freezes: int = 0

    def latency(self, kind: str, seconds: float, rng: random.Random) -> None:
        """Keep a uniform sample of at most LATENCY_SAMPLES per kind (hours-long runs)."""
        self.slowest[kind] = max(self.slowest[kind], seconds)
        kept = self.latencies[kind]
        seen = self.by_kind[kind]
        if len(kept) < LATENCY_SAMPLES:
            kept.append(seconds)
        elif (slot := rng.randrange(seen)) < LATENCY_SAMPLES:
            kept[slot] = seconds


def chat(content: str, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def rotating_body(index: int) -> tuple[str, dict[str, Any]]:
    """Seven in ten rotating bodies are chats, two completions, one an embedding."""
    text = f"soak rotating body {index}"
    if index % 10 < 7:
        return "/v1/chat/completions", chat(text)
    if index % 10 < 9:
        return "/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": text}
    return "/v1/embeddings", {"model": "text-embedding-3-small", "input": text}


def build(kind: str, rng: random.Random) -> tuple[str, str, bytes | None, dict[str, str]]:
    """method, path, body, headers of one request of `kind`."""
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    unique = f"soak {uuid.uuid4()}"
    if kind == "hit":
        path, body = rotating_body(rng.randrange(ROTATING))
        return "POST", path, json.dumps(body).encode(), headers
    if kind == "miss":
        return "POST", "/v1/chat/completions", json.dumps(chat(unique)).encode(), headers
    if kind == "stream":
        content = f"soak stream {rng.randrange(ROTATING_STREAMS)}" if rng.random() < 0.5 else unique
        return "POST", "/v1/chat/completions", json.dumps(chat(content, True)).encode(), headers
    if kind == "no-store":
        path, body = rotating_body(rng.randrange(ROTATING))
        return "POST", path, json.dumps(body).encode(), {**headers, "Cache-Control": "no-store"}
    if kind == "no-cache":
        data = json.dumps(chat(unique)).encode()
        return "POST", "/v1/chat/completions", data, {**headers, "Cache-Control": "no-cache"}
    if kind == "invalid":
        return "POST", rng.choice(CACHEABLE), rng.choice(INVALID_BODIES), headers
    if kind == "anonymous":
        return "POST", "/v1/chat/completions", json.dumps(chat(unique)).encode(), {}
    return "GET", "/v1/models", None, headers


def client_label(path: str, method: str, response: aiohttp.ClientResponse) -> tuple[str, str]:
    """The (route, cache) labels the proxy should count this answer under."""
    route = path if path in CACHEABLE and method == "POST" else PASSTHROUGH_ROUTE
    if response.status >= 400:
        return route, "error"
    return route, response.headers.get("X-Repro-Cache", "BYPASS").lower()


async def one_request(
    session: aiohttp.ClientSession, base: str, kind: str, rng: random.Random, tally: Tally
) -> None:
    method, path, body, headers = build(kind, rng)
    tally.sent += 1
    tally.by_kind[kind] += 1
    started = time.monotonic()
    try:
        async with session.request(method, base + path, data=body, headers=headers) as response:
            tally.answered += 1
            tally.latency(kind, time.monotonic() - started, rng)
            tally.labels[client_label(path, method, response)] += 1
            tally.statuses[response.status] += 1
            if response.status == 500 and response.content_type == "text/plain":
                tally.bare_500 += 1
            try:
                await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.broken_bodies[f"{kind}: {type(exc).__name__}"] += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.connection_errors[f"{kind}: {type(exc).__name__}"] += 1


async def worker(
    session: aiohttp.ClientSession, base: str, seed: int, stop: asyncio.Event, tally: Tally
) -> None:
    rng = random.Random(seed)
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    while not stop.is_set():
        await one_request(session, base, rng.choices(kinds, weights)[0], rng, tally)


async def inject_faults(
    sim_url: str,
    redis: Proc | None,
    every: float,
    stop: asyncio.Event,
    tally: Tally,
) -> None:
    turn = 0
    # A ClientSession of its own: the load keeps every connection of the clients' pool busy.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as control:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if stop.is_set():
                return
            fault = FAULTS[turn % len(FAULTS)]
            turn += 1
            await freeze_and_fault(control, sim_url, fault, redis, tally)


async def freeze_and_fault(
    control: aiohttp.ClientSession,
    sim_url: str,
    fault: dict[str, Any],
    redis: Proc | None,
    tally: Tally,
) -> None:
    async with control.post(sim_url + "/_sim/faults", json=fault) as response:
        response.raise_for_status()
    tally.faults[f"{fault['kind']} {fault.get('status', '')}".strip()] += 1
    if redis is not None:
        os.kill(redis.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(1.0)
        finally:
            os.kill(redis.pid, signal.SIGCONT)
        tally.freezes += 1


async def sample_loop(
    pid: int, t0: float, every: float, stop: asyncio.Event, samples: list[Sample]
) -> None:
    while not stop.is_set():
        samples.append(sample(pid, t0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def drive(
    args: argparse.Namespace, proxy: Proc, proxy_url: str, sim_url: str, redis: Proc | None
) -> tuple[Tally, list[Sample], Sample, Sample, float]:
    """Run the load; return the tally, samples under load, the idle samples before and after."""
    tally = Tally()
    samples: list[Sample] = []
    t0 = time.monotonic()
    idle_before = sample(proxy.pid, t0)
    stop = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        tasks = [
            asyncio.create_task(worker(session, proxy_url, args.seed + i, stop, tally))
            for i in range(args.concurrency)
        ]
        side = [
            asyncio.create_task(sample_loop(proxy.pid, t0, args.sample_every, stop, samples)),
            asyncio.create_task(inject_faults(sim_url, redis, args.fault_every, stop, tally)),
        ]
        try:
            deadline = t0 + args.duration
            while time.monotonic() < deadline:
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                if proxy.popen.poll() is not None:
                    raise RuntimeError(f"the proxy exited with {proxy.popen.returncode}")
                if args.progress and int(time.monotonic() - t0) % 10 == 0:
                    progress(t0, tally, samples)
        finally:
            stop.set()
            results = await asyncio.gather(*tasks, *side, return_exceptions=True)
            errors = [r for r in results if isinstance(r, Exception)]
            if errors:
                raise RuntimeError(f"a load or fault task failed: {errors[0]!r}") from errors[0]
        samples.append(sample(proxy.pid, t0))
    load_ended = time.monotonic() - t0
    # Idle: client connections are closed now; upstream keep-alive connections time out (15 s).
    idle_after = sample(proxy.pid, t0)
    wait_until = time.monotonic() + args.idle_wait
    while idle_after.fds > idle_before.fds + FD_SLACK and time.monotonic() < wait_until:
        await asyncio.sleep(1.0)
        idle_after = sample(proxy.pid, t0)
    return tally, samples, idle_before, idle_after, load_ended


def progress(t0: float, tally: Tally, samples: list[Sample]) -> None:
    last = samples[-1] if samples else None
    rss = f"{last.rss_kb / 1024:.1f} MB" if last else "?"
    fds = last.fds if last else "?"
    print(
        f"  t={time.monotonic() - t0:5.0f}s sent={tally.sent} answered={tally.answered} "
        f"conn_errors={sum(tally.connection_errors.values())} rss={rss} fds={fds}",
        flush=True,
    )


FD_SLACK = 8


def fd_margin(args: argparse.Namespace) -> int:
    """Descriptors that may stay open when idle: a few, plus a Redis connection pool."""
    return FD_SLACK + (2 * args.concurrency if args.redis or args.store else 0)


# --------------------------------------------------------------------------------------------
# checks and report


def scrape(proxy_url: str) -> tuple[Counter[tuple[str, str]], dict[str, float]]:
    text = httpx.get(proxy_url + "/metrics", timeout=10).text
    requests: Counter[tuple[str, str]] = Counter()
    store_errors: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "repro_requests_total":
                requests[(s.labels["route"], s.labels["cache"])] += int(s.value)
            elif s.name == "repro_store_errors_total":
                store_errors[s.labels["op"]] = s.value
    return requests, store_errors


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(
    args: argparse.Namespace,
    tally: Tally,
    samples: list[Sample],
    idle_before: Sample,
    idle_after: Sample,
    load_ended: float,
    counted: Counter[tuple[str, str]],
    store_errors: dict[str, float],
) -> list[str]:
    """Print the figures; return the names of the failed checks."""
    failed: list[str] = []

    def check(name: str, ok: bool, detail: str) -> None:
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}: {detail}")
        if not ok:
            failed.append(name)

    store = "redis (own, SIGSTOP 1 s per fault)" if args.redis else (args.store or "memory")
    print(f"\nsoak: {args.duration:.0f} s, concurrency {args.concurrency}, store {store}")
    rate = tally.sent / load_ended if load_ended else 0.0
    print(f"requests sent {tally.sent} ({rate:.0f}/s), answered {tally.answered}")
    print(f"  by kind: {dict(tally.by_kind)}")
    print(f"  statuses: {dict(sorted(tally.statuses.items()))}")
    print(f"  connection errors (no answer): {dict(tally.connection_errors) or 0}")
    print(f"  answered, body broken mid-way: {dict(tally.broken_bodies) or 0}")
    print(f"  faults injected: {dict(tally.faults)}; redis freezes: {tally.freezes}")
    print(f"  store errors (repro_store_errors_total): {store_errors or 0}")
    print("  time to response headers, ms (p50 / p99 / max):")
    for kind in WEIGHTS:
        values = tally.latencies.get(kind, [])
        if values:
            p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
            print(f"    {kind:<12} {p50:8.1f} {p99:8.1f} {tally.slowest[kind] * 1000:8.1f}")

    print("checks:")
    warm = next((s for s in samples if s.t >= args.warmup), samples[0])
    last = samples[-1]
    peak = max(samples, key=lambda s: s.rss_kb)
    growth_mb = (last.rss_kb - warm.rss_kb) / 1024
    after_warm = [s for s in samples if s.t >= warm.t]
    slope = _slope([(s.t, s.rss_kb / 1024) for s in after_warm]) * 60
    check(
        "memory flat",
        growth_mb < args.rss_limit,
        f"RSS first {samples[0].rss_kb / 1024:.1f} MB, after warm-up (t={warm.t:.0f}s) "
        f"{warm.rss_kb / 1024:.1f} MB, last {last.rss_kb / 1024:.1f} MB, max "
        f"{peak.rss_kb / 1024:.1f} MB (t={peak.t:.0f}s); growth after warm-up {growth_mb:+.1f} MB "
        f"(limit {args.rss_limit:g}), trend {slope:+.2f} MB/min",
    )
    peak_fds = max(s.fds for s in samples)
    peak_sockets = max(samples, key=lambda s: s.fds).sockets
    check(
        "descriptors released",
        idle_after.fds <= idle_before.fds + fd_margin(args),
        f"idle before load {idle_before.fds}, max under load {peak_fds}, idle after load "
        f"{idle_after.fds} (t={idle_after.t:.0f}s, allowed <= {idle_before.fds + fd_margin(args)});"
        f" TCP sockets idle before {idle_before.sockets}, at peak {peak_sockets}, idle after "
        f"{idle_after.sockets}; threads {idle_before.threads} -> {idle_after.threads}",
    )
    total = sum(counted.values())
    lost = sum(tally.connection_errors.values())
    exact = total == tally.answered
    within = tally.answered <= total <= tally.answered + lost
    check(
        "accounting identity",
        exact or (lost > 0 and within),
        f"sum(repro_requests_total) = {total}, answered = {tally.answered}, "
        f"connection errors = {lost}"
        + ("" if exact else f" (difference {total - tally.answered:+d})"),
    )
    keys = sorted(set(counted) | set(tally.labels))
    mismatched = [k for k in keys if counted[k] != tally.labels[k]]
    print("    route                  cache     /metrics   client")
    for key in keys:
        mark = "  <-- differs" if key in mismatched else ""
        print(f"    {key[0]:<22} {key[1]:<8} {counted[key]:9d} {tally.labels[key]:8d}{mark}")
    check(
        "per-label accounting",
        not mismatched or lost > 0,
        "every (route, cache) count equals the answers the client saw"
        if not mismatched
        else f"{len(mismatched)} labels differ",
    )
    check(
        "no unhandled 500",
        tally.bare_500 == 0,
        f"{tally.bare_500} text/plain 500 answers (aiohttp's own, an exception the proxy missed)",
    )
    hits = sum(v for (route, label), v in counted.items() if label == "hit")
    check("cache serves", hits > 0, f"{hits} HITs")
    return failed


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (units per second) of RSS over time."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--redis", action="store_true", help="start a redis-server and use it")
    where.add_argument("--store", help="use this --store URL (e.g. an existing redis://…)")
    parser.add_argument(
        "--memory-bytes",
        default="2MiB",
        help="memory:// LRU bound: small, so the cache is full and RSS measures leaks",
    )
    parser.add_argument("--fault-every", type=float, default=10.0, help="seconds between faults")
    parser.add_argument("--sample-every", type=float, default=2.0, help="seconds between samples")
    parser.add_argument(
        "--warmup", type=float, help="seconds before the RSS baseline (default min(20, duration/3))"
    )
    parser.add_argument("--rss-limit", type=float, default=20.0, help="MB of growth allowed")
    parser.add_argument(
        "--idle-wait", type=float, default=25.0, help="seconds to wait for fds to fall after load"
    )
    parser.add_argument("--request-timeout", type=float, default=30.0, help="client timeout")
    parser.add_argument("--seed", type=int, default=1, help="seed of the request mix")
    parser.add_argument("--progress", action="store_true", help="print a line every 10 s")
    parser.add_argument("--keep-logs", type=Path, help="copy the process logs to this directory")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(20.0, args.duration / 3)
    return args


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    # Also when started in the background, where a shell makes SIGINT ignored.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="repro-soak-"))
    procs: list[Proc] = []
    failed: list[str] = ["did not finish"]
    try:
        with sigterm_as_interrupt():
            sim_port, proxy_port = free_port(), free_port()
            sim_url, proxy_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{proxy_port}"
            PEERS.update({str(sim_port): "upstream", f"local:{proxy_port}": "clients"})
            python = [sys.executable, "-m", "proxy"]
            sim = start("sim", [*python, "sim", "--port", str(sim_port)], workdir)
            procs.append(sim)
            redis: Proc | None = None
            if args.redis:
                binary = shutil.which("redis-server")
                if binary is None:
                    failed = []
                    print("soak: redis-server not found on PATH", file=sys.stderr)
                    return 2
                redis_port = free_port()
                options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                options += ["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]
                argv = [binary, "--port", str(redis_port), "--dir", str(workdir), *options]
                redis = start("redis", argv, workdir)
                procs.append(redis)
                wait_for_redis(redis, redis_port)
                PEERS[str(redis_port)] = "redis"
                store = f"redis://127.0.0.1:{redis_port}/0"
            else:
                store = args.store or f"memory://?max_bytes={args.memory_bytes}"
                with contextlib.suppress(ValueError, TypeError):
                    port = urlsplit(store).port
                    if port:
                        PEERS[str(port)] = "redis"
            flags = ["--upstream", sim_url + "/v1", "--store", store]
            flags += ["--secret", "soak-secret-of-16-bytes", "--log-level", "warning"]
            proxy = start("proxy", [*python, "serve", "--port", str(proxy_port), *flags], workdir)
            procs.append(proxy)
            wait_until_proc_up(sim, sim_url + "/_sim/stats")
            wait_until_proc_up(proxy, proxy_url + "/healthz")
            print(
                f"soak: sim pid {sim.pid}, proxy pid {proxy.pid} ({store})"
                + (f", redis pid {redis.pid}" if redis else "")
                + f"; {args.duration:.0f} s at concurrency {args.concurrency}; logs in {workdir}",
                flush=True,
            )
            tally, samples, before, after, ended = asyncio.run(
                drive(args, proxy, proxy_url, sim_url, redis)
            )
            time.sleep(0.5)
            counted, store_errors = scrape(proxy_url)
            failed = report(args, tally, samples, before, after, ended, counted, store_errors)
            if proxy.popen.poll() is not None:
                failed.append("proxy exited")
    except KeyboardInterrupt:
        failed = []
        print("\nsoak: interrupted; stopping the processes", file=sys.stderr)
        return 130
    finally:
        for proc in reversed(procs):
            proc.stop()
        if failed:
            for proc in procs:
                print(f"\n--- {proc.name} log (tail) ---\n{proc.tail()}", file=sys.stderr)
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for proc in procs:
                shutil.copy(proc.log, args.keep_logs / proc.log.name)
        shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        print(f"\nsoak: FAILED: {', '.join(failed)}")
        return 1
    print("\nsoak: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
