"""Throughput of the proxy: req/s and CPU per request over bare-aiohttp floors run alongside.

    python bench/bench.py            # --short: a few seconds per workload, for CI and by hand
    python bench/bench.py --full     # the README table: warm-up, then 10 s per workload
    python bench/bench.py --json     # machine-readable results on stdout (the table on stderr)
    python bench/bench.py --only hit --profile /tmp/prof   # py-spy the proxy during its runs
    python bench/bench.py --gateway  # also LiteLLM, a popular gateway (installs it once; opt-in)
    python bench/bench.py --full --rounds 3   # each workload 3 times; ratios are the medians

It starts, on free 127.0.0.1 ports, each as its own process: `repro-proxy sim` (no artificial
latency), a redis-server of its own, the proxy at its default settings twice (memory:// and
redis://, db 0), the proxy once more on redis:// with its near-cache switched off
(`--near-cache 0`, db 2: "proxy redis:// no near-cache"), and the floors of bench/floors.py (a
dict hit, one redis GET per hit with hiredis on db 1, a pass-through with one keep-alive
ClientSession, and for the first byte a relay that copies bytes without parsing HTTP). Then it
drives the same workloads at each with wrk (1 thread, 64 connections, Lua scripts in bench/wrk/)
and reads each server's CPU time (utime + stime of the process and its children, from /proc)
before and after every run:

    hit               one stored chat body, over and over
    hit many keys     a few thousand distinct stored bodies in rotation (pre-warmed)
    streaming hit     one stored streamed body (the recorded SSE frames are replayed)
    miss              a body never seen before on every request (unique per request)
    streaming TTFB    time to the first byte of a streamed MISS, through the proxy vs direct

"hit" and "hit many keys" also run, as "hit (Redis, near-cache off)" and "hit many keys (Redis,
near-cache off)", against the proxy without near-cache: one Redis round trip per hit.

It verifies before it measures, and checks while it measures: every body of a hit workload is
sent once with aiohttp and must come back 200 with `X-Repro-Cache: HIT` (the floors answer that
header too); miss bodies must come back `MISS`; wrk must see no socket error and no status >= 400
(its Lua `done` hook reports them); and the proxy's own repro_requests_total (floors: their
/_floor/stats) must show that every request of the run was a HIT (or a MISS). A run that fails
any of that is reported as an error, not a figure, and the command exits 1.

Ratios are req/s of the proxy over req/s of its floor measured in the same run (Redis hit vs
the redis-GET floor, with the near-cache and without it, memory hit vs the dict floor, miss vs
the pass-through floor), and over the reference figures of "a popular Python LLM gateway"
(GATEWAY_HIT_RPS, GATEWAY_MISS_RPS, one worker). Those figures are absolute, from a reference
machine whose redis-GET floor was REFERENCE_REDIS_FLOOR_RPS; for the Redis hit workloads the
ratio table also shows, for information, the ratio over the gateway's figure scaled to this
machine: GATEWAY_HIT_RPS x (this run's redis-GET floor req/s) / REFERENCE_REDIS_FLOOR_RPS (JSON:
ratio_gateway_scaled). The TARGETS apply to the unscaled ratio. The hit bodies ask for n=4
choices so the sim's answer comes close to the reference workload's ~100-token answer.

With --rounds N every workload is measured N times in a row, every other round in the opposite
order (so that neither the floor nor the proxy always runs first, on a machine that drifts);
each proxy run is compared with its floor's run of the same round, and the ratio table shows the
median over the rounds next to each round's own req/s ratio (JSON: "medians"; "ratios" keeps
one line per round): on a noisy machine a single run's ratio moves from run to run.

With --gateway (never in CI: it downloads packages) that gateway is measured instead of quoted:
bench/gateway.py installs LiteLLM's proxy once into a venv of its own under ~/.cache, runs it as
one worker with its Redis cache (db 3 of the bench's redis-server) in front of the sim, and the
"hit (Redis)" and "miss (Redis)" workloads measure it too. Its hits must answer
`x-litellm-cache-key` before the run and the sim must see no chat call during it (a miss: a call
for every request); the proxy's gateway ratios there are then over its req/s from this run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from prometheus_client.parser import text_string_to_metric_families

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import gateway  # noqa: E402  (LiteLLM, measured with --gateway)
import stream_ttfb  # noqa: E402  (the TTFB logic of bench/stream_ttfb.py, reused)
from procs import free_port, stop, wait_redis_up, wait_until_up  # noqa: E402

START_TIMEOUT = 30.0
API_KEY = "sk-bench"
AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
STORE_ERRORS = "store errors, op="  # prefix of repro_store_errors_total counts in outcomes()
CLK_TCK = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1

# Reference figures measured on this kind of machine (2 cores, loopback, wrk 1 thread,
# 64 connections, small chat body, ~100-token answer).
REFERENCE = {
    "nginx proxy_cache (C)": {"hit_rps": 75_000, "miss_rps": 13_000, "cpu_us_per_hit": 14},
    "bare aiohttp, dict": {"hit_rps": 31_000, "cpu_us_per_hit": 32},
    "bare aiohttp, redis GET (hiredis)": {"hit_rps": 13_000, "cpu_us_per_hit": 77},
    "bare aiohttp pass-through": {"miss_rps": 8_000, "cpu_us_per_hit": 120},
    "popular Python LLM gateway + Redis": {"hit_rps": 150, "miss_rps": 90, "cpu_us_per_hit": 7000},
}
GATEWAY_HIT_RPS = 150.0  # one worker; 250 with two
GATEWAY_MISS_RPS = 90.0  # one worker; 130 with two
# The reference machine's redis-GET floor, to scale the gateway's figure to this machine.
REFERENCE_REDIS_FLOOR_RPS = float(REFERENCE["bare aiohttp, redis GET (hiredis)"]["hit_rps"])
# The targets, printed next to the ratios (information only: nothing is asserted).
# Floor targets by ratio kind (Run.ratio_kind), then the gateway and TTFB targets.
TARGETS = {
    "redis": 1.0,  # Redis hit, default near-cache, over the redis-GET floor
    "redis_no_near": 0.7,  # Redis hit, --near-cache 0, over the redis-GET floor
    "memory": 0.6,  # memory hit over the dict floor
    "miss": 0.7,  # miss over the pass-through floor, which uses the same upstream client
    "gateway": 50.0,  # Redis hit over the popular gateway's GATEWAY_HIT_RPS (unscaled)
    "ttfb_ms": 1.0,
}
RATIO_KINDS = ("redis", "redis_no_near", "memory", "miss")
# The processes whose CPU a run's "+aux us" adds (besides the server under test).
REDIS, SIM, SIM_REDIS = ("redis-server",), ("sim",), ("sim", "redis-server")
MODEL = "gpt-4o-mini"  # of every request body
# --gateway measures LiteLLM in these two workloads: like the proxy there, it caches in Redis.
GATEWAY_HIT_WORKLOAD = "hit (Redis)"
GATEWAY_MISS_WORKLOAD = "miss (Redis)"
REDIS_HIT_KINDS = frozenset({"redis", "redis_no_near"})  # vs the redis-GET floor


@dataclass(frozen=True)
class Mode:
    name: str
    duration: int  # seconds of each measured wrk run
    warmup: int  # seconds of an unmeasured wrk run before it (0 = none)
    many_keys: int  # distinct bodies of the "many keys" workloads
    ttfb_requests: int  # streamed MISSes each way for the TTFB comparison


SHORT = Mode("short", duration=1, warmup=0, many_keys=200, ttfb_requests=40)
FULL = Mode("full", duration=10, warmup=2, many_keys=4000, ttfb_requests=300)


class BenchError(RuntimeError):
    """A verification failed: the run it belongs to gives an error, not a figure."""


_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- request bodies --------------------------------------------------------------------------


def chat_body(text: str, *, stream: bool = False) -> str:
    """A small chat request; n=4 brings the sim's answer close to the reference's ~100 tokens.

    No seed: the proxy injects its default one, the path most clients take.
    """
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "n": 4,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":"))


# --- processes -------------------------------------------------------------------------------


@dataclass
class Server:
    """One process the benchmark started; `url` is its base URL (with /v1 for HTTP servers)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base + "/v1"

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextmanager
def started(
    name: str,
    args: list[str],
    port: int,
    logs: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> Iterator[Server]:
    """Run ARGS (stdout and stderr to a log file) until the block ends; ENV adds variables."""
    log_path = logs / (re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") + ".log")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REPRO_")}  # defaults only
    environ.update(env or {})
    with log_path.open("wb") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=environ, stdout=out, stderr=subprocess.STDOUT)
    server = Server(name, proc, port, log_path)
    try:
        yield server
    finally:
        stop(proc, grace=10)


def wait_http(server: Server, path: str, timeout: float = START_TIMEOUT) -> None:
    try:
        wait_until_up(server.base + path, server.proc, timeout)
    except RuntimeError as exc:
        raise BenchError(f"{server.name}: {exc}\n{server.log_tail()}") from None


def wait_redis(server: Server) -> None:
    try:
        wait_redis_up(server.port, server.proc, START_TIMEOUT)
    except RuntimeError as exc:
        raise BenchError(f"{exc}:\n{server.log_tail()}") from None


def cpu_ticks(pid: int) -> int:
    """utime + stime, in clock ticks, of `pid` and every live descendant (--workers N)."""
    children: dict[int, list[int]] = {}
    own: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                rest = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        child = int(entry.name)
        children.setdefault(int(rest[1]), []).append(child)
        own[child] = int(rest[11]) + int(rest[12])
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += own.get(current, 0)
        todo.extend(children.get(current, ()))
    return total


def warnings_in_log(server: Server, count: int = 3) -> str:
    """The last warnings and errors a process logged (the proxy logs JSON lines), if any."""
    try:
        lines = server.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    levels = ('"level":"warning"', '"level":"error"')
    found = [line[:300] for line in lines if any(level in line for level in levels)]
    return ("; its log: " + " | ".join(found[-count:])) if found else ""


def busy_ticks() -> int:
    """CPU ticks spent by the whole machine, all CPUs (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields[:3]) + sum(fields[5:8])


def own_ticks() -> int:
    """CPU ticks of this process and of the children it has waited for (wrk)."""
    t = os.times()
    return round((t.user + t.system + t.children_user + t.children_system) * CLK_TCK)


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


# --- verification ----------------------------------------------------------------------------


def repro_cache(headers: Mapping[str, str]) -> str:
    """HIT or MISS as the proxy and the floors say it (LiteLLM: gateway.cache_state)."""
    return headers.get("X-Repro-Cache", "-")


def choice_count(data: bytes) -> int:
    """How many choices a JSON chat answer has (-1: not one)."""
    try:
        return len(json.loads(data)["choices"])
    except (ValueError, KeyError, TypeError):
        return -1


async def send_all(
    url: str,
    bodies: list[str],
    expect: str | None,
    concurrency: int = 32,
    cache_state: Callable[[Mapping[str, str]], str] = repro_cache,
) -> Counter[str]:
    """POST every body once; each must answer 200 (and cache state `expect`, if given), and a
    JSON answer as many choices as its body asked for (n=4: a server must pass it on)."""
    seen: Counter[str] = Counter()
    failures: list[str] = []
    queue = iter(bodies)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for body in queue:
                async with session.post(url + "/chat/completions", data=body, headers=AUTH) as r:
                    data = await r.read()
                    cache = cache_state(r.headers)
                seen[cache] += 1
                streamed = b'"stream":true' in body.encode()
                asked, got = json.loads(body).get("n", 1), choice_count(data)
                if r.status != 200:
                    failures.append(f"status {r.status}: {data[:200]!r}")
                elif expect is not None and cache != expect:
                    failures.append(f"cache state {cache}, expected {expect}")
                elif streamed and not data.endswith(b"data: [DONE]\n\n"):
                    failures.append("a streamed answer that does not end with [DONE]")
                elif not streamed and got != asked:
                    failures.append(f"{got} choices, the body asked for {asked}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    if failures:
        raise BenchError(f"{len(failures)} of {len(bodies)} answers wrong, e.g. {failures[0]}")
    return seen


def outcomes(server: Server, role: str, sim: Server | None = None) -> Counter[str]:
    """What the server says it served so far: the proxy's repro_requests_total by cache label
    (all routes), a floor's /_floor/stats; for the gateway, which counts nothing we can read
    without its paid metrics, the chat completions the sim has answered (`upstream`)."""
    if role == "gateway" and sim is not None:
        stats = httpx.get(sim.base + "/_sim/stats", timeout=5).json()
        return Counter({"upstream": int(stats["requests"].get("/v1/chat/completions", 0))})
    if role == "floor":
        stats = httpx.get(server.base + "/_floor/stats", timeout=5).json()
        return Counter({k: int(v) for k, v in stats.items()})
    if role != "proxy":
        return Counter()
    text = httpx.get(server.base + "/metrics", timeout=5).text
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "repro_requests_total":
                counts[sample.labels.get("cache", "?")] += int(sample.value)
            elif sample.name == "repro_store_errors_total":
                counts[STORE_ERRORS + sample.labels.get("op", "?")] += int(sample.value)
    return counts


# --- wrk -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """What wrk sends: a script of bench/wrk and the bodies file it reads."""

    script: str  # post.lua | rotate.lua | unique.lua
    bodies: Path
    expect: str  # X-Repro-Cache every request must get: HIT or MISS


def run_wrk(url: str, load: Load, seconds: int, threads: int, connections: int) -> dict[str, Any]:
    env = {
        **os.environ,
        "WRK_BODIES": str(load.bodies),
        "WRK_API_KEY": API_KEY,
        "WRK_RUN": uuid.uuid4().hex[:12],
    }
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
        "-s", str(BENCH / "wrk" / load.script), url + "/chat/completions",
    ]  # fmt: skip
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return dict(json.loads(line[len("WRK_JSON ") :]))
    raise BenchError(f"wrk gave no figures (exit {done.returncode}):\n{done.stdout}{done.stderr}")


def need_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(
            "bench: wrk not found on PATH. Install it: apt-get install wrk (Debian/Ubuntu)"
        )
    return subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]


# --- one measured run --------------------------------------------------------------------------


@dataclass
class Run:
    workload: str
    target: str
    role: str  # proxy | floor | direct
    round: int = 1  # of --rounds: a proxy run is compared with its floor's run of the same round
    floor: str | None = None  # the target this one is compared with
    ratio_kind: str | None = None  # which of the TARGETS applies: one of RATIO_KINDS
    ok: bool = False
    error: str | None = None
    verified: str = ""
    req_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_us_per_req: float = 0.0
    # The processes doing the rest of the work (redis-server, the sim, both for the Redis miss):
    # their CPU per request, summed and by process.
    aux: tuple[str, ...] = ()
    aux_cpu_us_per_req: float | None = None
    aux_cpu_us_by_process: dict[str, float] = field(default_factory=dict)
    bytes_per_req: float = 0.0
    requests: int = 0
    wrk_errors: dict[str, int] = field(default_factory=dict)
    rss_mib: float = 0.0
    retried_after: str | None = None  # the failure of a first attempt, when there was one
    other_cpu_pct: float = 0.0  # CPU share of processes not part of this run (noise)
    ratio_floor: float | None = None
    cpu_ratio_floor: float | None = None  # floor CPU/req over proxy CPU/req (noise-robust)
    ratio_gateway: float | None = None
    # Informational: over the gateway's figure scaled by this run's floor / the reference floor.
    ratio_gateway_scaled: float | None = None

    def __post_init__(self) -> None:
        if self.ratio_kind is not None and self.ratio_kind not in RATIO_KINDS:
            raise ValueError(f"ratio_kind {self.ratio_kind!r} is not one of {RATIO_KINDS}")


class Bench:
    def __init__(
        self, mode: Mode, threads: int, connections: int, profile: Path | None, rounds: int
    ) -> None:
        self.mode, self.threads, self.connections, self.profile, self.rounds = (
            mode,
            threads,
            connections,
            profile,
            rounds,
        )
        self.runs: list[Run] = []
        self.servers: dict[str, Server] = {}
        self.roles: dict[str, str] = {}
        self.profiles: dict[str, Any] = {}

    def measure(
        self,
        workload: str,
        target: str,
        load: Load,
        *,
        floor: str | None = None,
        ratio_kind: str | None = None,
        aux: tuple[str, ...] = (),
        round: int = 1,
    ) -> Run:
        role = self.roles[target]
        run = Run(workload, target, role, round, floor=floor, ratio_kind=ratio_kind, aux=aux)
        self.runs.append(run)
        server = self.servers[target]
        log(f"  {workload:<24} {target}" + (f" (round {round})" if self.rounds > 1 else ""))
        try:
            if self.mode.warmup:
                run_wrk(server.url, load, self.mode.warmup, self.threads, self.connections)
            before = outcomes(server, role, self.servers.get("sim"))
            cpu0 = cpu_ticks(server.pid)
            aux0 = {name: cpu_ticks(self.servers[name].pid) for name in aux}
            busy0, ours0, wall0 = busy_ticks(), own_ticks(), time.monotonic()
            with self.profiling(workload, target, server, round):
                figures = run_wrk(
                    server.url, load, self.mode.duration, self.threads, self.connections
                )
            cpu1 = cpu_ticks(server.pid)
            aux1 = {name: cpu_ticks(self.servers[name].pid) for name in aux}
            busy1, ours1, wall1 = busy_ticks(), own_ticks(), time.monotonic()
            after = outcomes(server, role, self.servers.get("sim"))
            self.check(run, load, figures, after - before)
        except BenchError as exc:
            run.error = str(exc) + warnings_in_log(server)
            log(f"    ERROR: {run.error}")
            return run
        requests = figures["requests"]
        seconds = figures["duration_us"] / 1e6
        run.requests = requests
        run.req_s = requests / seconds
        run.p50_ms = figures["latency_us"]["p50"] / 1000
        run.p99_ms = figures["latency_us"]["p99"] / 1000
        run.bytes_per_req = figures["bytes"] / requests
        run.cpu_us_per_req = (cpu1 - cpu0) / CLK_TCK * 1e6 / requests
        aux_ticks = {name: aux1[name] - aux0[name] for name in aux}
        run.aux_cpu_us_by_process = {
            name: ticks / CLK_TCK * 1e6 / requests for name, ticks in aux_ticks.items()
        }
        if aux:
            run.aux_cpu_us_per_req = sum(run.aux_cpu_us_by_process.values())
        run.rss_mib = rss_mib(server.pid)
        others = (busy1 - busy0) - (ours1 - ours0) - (cpu1 - cpu0) - sum(aux_ticks.values())
        run.other_cpu_pct = max(0.0, 100 * others / CLK_TCK / ((wall1 - wall0) * CPUS))
        run.ok = True
        return run

    def check(self, run: Run, load: Load, figures: dict[str, Any], served: Counter[str]) -> None:
        """No socket error, no status >= 400, and the server served what the workload expects."""
        errors = {k: v for k, v in figures["errors"].items() if v}
        run.wrk_errors = figures["errors"]
        if not figures["requests"]:
            raise BenchError("wrk completed no request")
        if errors:
            raise BenchError(f"wrk saw errors {errors} in {figures['requests']} requests")
        notes = [f"wrk: {figures['requests']} answers, none >= 400, no socket error"]
        if run.role == "proxy":
            wanted = load.expect.lower()
            store_errors = {k: v for k, v in served.items() if k.startswith(STORE_ERRORS) and v}
            other = {k: v for k, v in served.items() if k != wanted and v and k not in store_errors}
            if other or served[wanted] < figures["requests"]:
                raise BenchError(
                    f"the proxy answered {dict(other)} and {served[wanted]} {wanted} while wrk "
                    f"completed {figures['requests']}: not all {load.expect}"
                    + (f" ({store_errors} during the run)" if store_errors else "")
                )
            notes.append(f"metrics: {served[wanted]} {wanted}, nothing else")
        elif run.role == "floor" and load.expect == "HIT":
            if served["miss"] or served["hit"] < figures["requests"]:
                raise BenchError(f"the floor served {dict(served)}: not all HIT")
            notes.append(f"floor stats: {served['hit']} hit, no miss")
        elif run.role == "gateway":  # a request LiteLLM does not answer from its cache: the sim
            calls, requests = served["upstream"], figures["requests"]
            if load.expect == "HIT" and calls:
                raise BenchError(
                    f"the sim answered {calls} chat completions while wrk completed {requests}: "
                    "LiteLLM did not serve them all from its cache"
                )
            if load.expect == "MISS" and calls < requests:
                raise BenchError(
                    f"the sim answered {calls} chat completions while wrk completed {requests}: "
                    "not all MISS"
                )
            notes.append(f"sim: {calls} chat completions during the run")
        run.verified = "; ".join(notes)

    @contextmanager
    def profiling(self, workload: str, target: str, server: Server, round: int) -> Iterator[None]:
        """With --profile, py-spy samples the proxy for the measured run (collapsed stacks), a
        file per round when there are several."""
        if self.profile is None or self.roles[target] != "proxy":
            yield
            return
        if self.rounds > 1:
            target = f"{target} #{round}"
        name = re.sub(r"[^a-z0-9]+", "-", f"{workload} {target}".lower()).strip("-")
        out = self.profile / f"{name}.txt"
        command = [
            "py-spy", "record", "--pid", str(server.pid), "--format", "raw", "--rate", "250",
            "--duration", str(self.mode.duration), "-o", str(out),
        ]  # fmt: skip
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            yield
        finally:
            _, err = spy.communicate(timeout=self.mode.duration + 30)
            if spy.returncode == 0 and out.exists():
                self.profiles[f"{workload} | {target}"] = top_functions(out) | {"file": str(out)}
            else:
                log(f"    py-spy failed: {err.decode(errors='replace')[-300:]}")


# --- profiles ----------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Entry-point and event-loop frames sit under every sample: left out of the cumulative list.
_PLUMBING = re.compile(
    r"<module> \(proxy/__main__|_run_code|_run_module_as_main|^main \(proxy/cli|^serve \(proxy/cli"
    r"|^run \(proxy/workers|^run_app |BaseEventLoop\.run_|BaseEventLoop\._run_once|Handle\._run"
)


def top_functions(path: Path, count: int = 15) -> dict[str, Any]:
    """The hottest functions of py-spy's collapsed stacks, by self and by cumulative samples."""
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        total += n
        frames = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            name = f"{m['func']} ({short_path(m['file'])})" if m else frame
            frames.append(name)
        if frames:
            own[frames[-1]] += n
        for name in set(frames):
            if not _PLUMBING.search(name):
                cumulative[name] += n
    share = (lambda n: round(100 * n / total, 1)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "self": [[name, share(n)] for name, n in own.most_common(count)],
        "cumulative": [[name, share(n)] for name, n in cumulative.most_common(count)],
    }


def short_path(path: str) -> str:
    for marker in ("site-packages/", "lib/python3", "/proxy/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return ("proxy/" + tail) if marker == "/proxy/" else tail.split("/", 1)[-1]
    return path


# --- the benchmark -----------------------------------------------------------------------------


def gather(coro: Any) -> Any:
    return asyncio.run(coro)


def ratios(runs: list[Run]) -> list[dict[str, Any]]:
    """Fill ratio_floor / ratio_gateway (/ ratio_gateway_scaled) of the proxy runs; one summary
    line per proxy run.

    ratio_gateway is over the gateway measured in the same workload of this run (--gateway:
    LiteLLM, in "hit (Redis)" and "miss (Redis)"), else over the gateway's absolute reference
    figure (GATEWAY_HIT_RPS, GATEWAY_MISS_RPS); the gateway target applies to it. A gateway run
    that failed gives no ratio, not the reference figure in its place. For the Redis hit kinds,
    ratio_gateway_scaled is over the reference figure scaled to this machine by the redis-GET
    floor of the same workload, measured in the same run: GATEWAY_HIT_RPS x floor req/s /
    REFERENCE_REDIS_FLOOR_RPS; information only. With --rounds, each round's runs are compared
    among themselves.
    """
    by_key = {(r.workload, r.target, r.round): r for r in runs}
    gateways = {(r.workload, r.round): r for r in runs if r.role == "gateway"}
    summary = []
    for run in runs:
        if run.role != "proxy":
            continue
        kind = run.ratio_kind or ""
        redis_hit = kind in REDIS_HIT_KINDS
        floor = by_key.get((run.workload, run.floor or "", run.round))
        if floor is not None and not (floor.ok and floor.req_s > 0):
            floor = None  # a failed floor gives no ratio
        reference_gateway = GATEWAY_MISS_RPS if kind == "miss" else GATEWAY_HIT_RPS
        measured = gateways.get((run.workload, run.round))
        gateway: float | None = reference_gateway
        cpu_ratio_gateway: float | None = None
        if measured is not None:
            gateway = measured.req_s if measured.ok and measured.req_s > 0 else None
        gateway_scaled: float | None = None
        if run.ok:
            if gateway is not None:
                run.ratio_gateway = run.req_s / gateway
            if measured is not None and gateway is not None and run.cpu_us_per_req:
                cpu_ratio_gateway = measured.cpu_us_per_req / run.cpu_us_per_req
            if floor is not None:
                run.ratio_floor = run.req_s / floor.req_s
                if run.cpu_us_per_req:
                    run.cpu_ratio_floor = floor.cpu_us_per_req / run.cpu_us_per_req
                if redis_hit:
                    gateway_scaled = reference_gateway * floor.req_s / REFERENCE_REDIS_FLOOR_RPS
                    run.ratio_gateway_scaled = run.req_s / gateway_scaled
        summary.append(
            {
                "workload": run.workload,
                "proxy": run.target,
                "round": run.round,
                "floor": run.floor,
                "ratio_kind": run.ratio_kind,
                "ratio_floor": run.ratio_floor,
                "cpu_ratio_floor": run.cpu_ratio_floor,
                "target_floor": TARGETS.get(kind),
                "ratio_gateway": run.ratio_gateway,
                "gateway_rps": gateway,
                # "measured": over the gateway's run in this workload (its name in "gateway");
                # "reference": over the gateway's figure from the reference machine
                "gateway_basis": "reference" if measured is None else "measured",
                "gateway": measured.target if measured is not None else None,
                "cpu_ratio_gateway": cpu_ratio_gateway,  # its CPU/req over the proxy's
                # the 50x target is for the proxy at its defaults, i.e. with its near-cache
                "target_gateway": TARGETS["gateway"] if kind == "redis" else None,
                # information only, Redis hit kinds: the gateway's figure scaled to this machine
                "ratio_gateway_scaled": run.ratio_gateway_scaled,
                "gateway_scaled_rps": gateway_scaled,
                "floor_rps": floor.req_s if redis_hit and floor is not None else None,
                "reference_floor_rps": REFERENCE_REDIS_FLOOR_RPS if redis_hit else None,
            }
        )
    return summary


MEDIAN_FIGURES = (
    "ratio_floor",
    "cpu_ratio_floor",
    "ratio_gateway",
    "cpu_ratio_gateway",
    "ratio_gateway_scaled",
    "gateway_rps",
    "gateway_scaled_rps",
    "floor_rps",
)


def medians(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per workload and proxy over its rounds: each ratio's median (rounds without
    the figure left out), and the rounds' own ratios over the floor, in round order."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for line in summary:
        grouped.setdefault((line["workload"], line["proxy"]), []).append(line)
    result = []
    for lines in grouped.values():
        merged = {**lines[0], "round": None}
        for name in MEDIAN_FIGURES:
            values = [line[name] for line in lines if line[name] is not None]
            merged[name] = statistics.median(values) if values else None
        merged["rounds"] = [line["ratio_floor"] for line in lines]
        result.append(merged)
    return result


def gateway_summary(
    install: gateway.Install | None, runs: list[Run], lines: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """With --gateway: what was installed, and LiteLLM's figures next to the proxy's Redis hit
    (medians over the rounds; the ratio is the ratio table's, from `lines`)."""
    if install is None:
        return None

    def figure(workload: str, role: str, name: str) -> float | None:
        values = [
            getattr(r, name) for r in runs if (r.workload, r.role, r.ok) == (workload, role, True)
        ]
        return statistics.median(values) if values else None

    hit, proxy_hit = figure(GATEWAY_HIT_WORKLOAD, "gateway", "req_s"), None
    if hit:
        proxy_hit = figure(GATEWAY_HIT_WORKLOAD, "proxy", "req_s")
    measured = [
        line["ratio_gateway"]
        for line in lines
        if line["workload"] == GATEWAY_HIT_WORKLOAD and line["gateway_basis"] == "measured"
    ]
    return {
        "name": gateway.NAME,
        "requirement": gateway.REQUIREMENT,
        "venv": str(install.venv),
        "install_s": round(install.install_s, 1),
        "venv_mib": round(install.venv_mib),
        "reused_install": install.reused,
        "hit_rps": hit,
        "cpu_us_per_hit": figure(GATEWAY_HIT_WORKLOAD, "gateway", "cpu_us_per_req"),
        "miss_rps": figure(GATEWAY_MISS_WORKLOAD, "gateway", "req_s"),
        "cpu_us_per_miss": figure(GATEWAY_MISS_WORKLOAD, "gateway", "cpu_us_per_req"),
        "proxy_redis_hit_rps": proxy_hit,
        "ratio_redis_hit": measured[0] if measured else None,
    }


def ttfb(
    direct: Server, relay: Server, floor: Server, proxies: list[Server], requests: int
) -> dict[str, Any]:
    """Streamed MISSes with unique bodies, interleaved: direct to the sim, through the byte
    relay (a hop that parses no HTTP), through the pass-through floor (one bare aiohttp hop),
    and through each proxy."""
    result: dict[str, Any] = {"requests": requests, "ok": False}
    with ExitStack() as stack:
        clients = {
            s.name: stack.enter_context(
                httpx.Client(base_url=s.url, headers=stream_ttfb.AUTH, timeout=30)
            )
            for s in [direct, relay, floor, *proxies]
        }
        for client in clients.values():  # warm connections, and each hop's pool to the sim
            for _ in range(5):
                stream_ttfb.timed_stream(client, stream_ttfb.body(uuid.uuid4().hex))
        timings: dict[str, list[stream_ttfb.Timing]] = {name: [] for name in clients}
        order = list(clients)
        for i in range(requests):
            for name in order[i % len(order) :] + order[: i % len(order)]:
                timings[name].append(
                    stream_ttfb.timed_stream(clients[name], stream_ttfb.body(uuid.uuid4().hex))
                )
    for proxy in proxies:
        caches = Counter(t.cache for t in timings[proxy.name])
        if caches != Counter({"MISS": requests}):
            result["error"] = f"{proxy.name}: expected only MISS, got {dict(caches)}"
            return result
    ms = lambda values: [v * 1000 for v in values]  # noqa: E731
    direct_fb = ms([t.first_byte for t in timings[direct.name]])
    floor_p50 = stream_ttfb.percentile(ms([t.first_byte for t in timings[floor.name]]), 50)
    result["direct"] = {
        "p50_ms": stream_ttfb.percentile(direct_fb, 50),
        "p99_ms": stream_ttfb.percentile(direct_fb, 99),
    }
    for hop in [relay, floor, *proxies]:
        fb = ms([t.first_byte for t in timings[hop.name]])
        paired = [p - d for p, d in zip(fb, direct_fb, strict=True)]
        result[hop.name] = {
            "p50_ms": stream_ttfb.percentile(fb, 50),
            "p99_ms": stream_ttfb.percentile(fb, 99),
            "delta_p50_ms": stream_ttfb.percentile(fb, 50) - stream_ttfb.percentile(direct_fb, 50),
            "paired_delta_p50_ms": stream_ttfb.percentile(paired, 50),
            "over_floor_p50_ms": stream_ttfb.percentile(fb, 50) - floor_p50,
            "floor": hop in (relay, floor),
        }
    result["ok"] = True
    return result


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    mode = FULL if args.full else SHORT
    if args.duration:
        mode = Mode(mode.name, args.duration, mode.warmup, mode.many_keys, mode.ttfb_requests)
    if args.many_keys:
        mode = Mode(mode.name, mode.duration, mode.warmup, args.many_keys, mode.ttfb_requests)
    wrk_version = need_wrk()
    redis_binary = shutil.which("redis-server")
    if redis_binary is None:
        raise SystemExit(
            "bench: redis-server not found on PATH. Install it: apt-get install redis-server"
        )
    bench = Bench(mode, args.threads, args.connections, args.profile, args.rounds)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    only = args.only
    wanted = (lambda name: any(o in name for o in only)) if only else (lambda name: True)
    install: gateway.Install | None = None
    if args.gateway and (wanted(GATEWAY_HIT_WORKLOAD) or wanted(GATEWAY_MISS_WORKLOAD)):
        try:
            install = gateway.ensure_installed(log)
        except gateway.GatewayError as exc:
            raise BenchError(f"--gateway: {exc}") from exc
    started_at = time.monotonic()
    load_before = list(os.getloadavg())
    py = sys.executable
    with ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="repro-bench-")))
        if args.keep_logs:
            logs = args.keep_logs
            logs.mkdir(parents=True, exist_ok=True)
        ports = {
            name: free_port()
            for name in (
                "sim", "redis", "mem", "red", "red_nn", "dict", "rget", "pass", "relay", "gw"
            )
        }  # fmt: skip
        redis_url = f"redis://127.0.0.1:{ports['redis']}"
        servers = bench.servers
        log(f"bench: starting processes (logs in {logs})")

        def start(name: str, role: str, argv: list[str], key: str, **how: Any) -> Server:
            server = stack.enter_context(started(name, argv, ports[key], logs, **how))
            servers[name], bench.roles[name] = server, role
            return server

        sim = start("sim", "direct", [py, "-m", "proxy", "sim", "--port", str(ports["sim"])], "sim")
        redis_server = start(
            "redis-server",
            "aux",
            [
                redis_binary, "--port", str(ports["redis"]), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(logs),
            ],
            "redis",
        )  # fmt: skip
        gw: Server | None = None
        if install is not None:  # first: it takes the longest to start
            config = gateway.write_config(
                logs / "litellm-config.yaml",
                models=[MODEL],
                upstream=sim.url,
                redis_port=ports["redis"],
                api_key=API_KEY,
            )
            wait_redis(redis_server)  # it pings Redis and lists the sim's models at start-up
            wait_http(sim, "/_sim/settings")
            gw = start(
                gateway.NAME,
                "gateway",
                gateway.command(install, config, ports["gw"]),
                "gw",
                env=gateway.ENV,
                cwd=install.root,
            )
        up = ["--upstream", sim.url]
        serve = [py, "-m", "proxy", "serve", *shlex.split(args.proxy_args)]
        mem = start("proxy memory://", "proxy", [*serve, "--port", str(ports["mem"]), *up], "mem")
        red = start(
            "proxy redis://",
            "proxy",
            [*serve, "--port", str(ports["red"]), *up, "--store", redis_url + "/0"],
            "red",
        )
        red_nn = start(  # its own db: its entries and the other proxy's never meet
            "proxy redis:// no near-cache",
            "proxy",
            [
                *serve, "--port", str(ports["red_nn"]), *up, "--store", redis_url + "/2",
                "--near-cache", "0",
            ],
            "red_nn",
        )  # fmt: skip
        floors = [py, str(BENCH / "floors.py")]
        dict_floor = start(
            "dict floor", "floor", [*floors, "dict", "--port", str(ports["dict"]), *up], "dict"
        )
        rget_floor = start(
            "redis-GET floor",
            "floor",
            [*floors, "redis", "--port", str(ports["rget"]), *up, "--redis", redis_url + "/1"],
            "rget",
        )
        pass_floor = start(
            "pass-through floor",
            "floor",
            [*floors, "passthrough", "--port", str(ports["pass"]), *up],
            "pass",
        )
        relay = start(
            "byte relay", "floor", [*floors, "relay", "--port", str(ports["relay"]), *up], "relay"
        )
        wait_redis(redis_server)
        wait_http(sim, "/_sim/settings")
        wait_http(relay, "/_sim/settings")  # through it, to the sim
        for server in (mem, red, red_nn):
            wait_http(server, "/healthz")
        for server in (dict_floor, rget_floor, pass_floor):
            wait_http(server, "/_floor/stats")
        if gw is not None:
            wait_http(gw, gateway.HEALTH_PATH, gateway.START_TIMEOUT)
        log(
            f"bench: up in {time.monotonic() - started_at:.1f} s; mode {mode.name}, "
            f"{mode.duration} s per run, wrk -t{args.threads} -c{args.connections}"
        )

        files = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="repro-bodies-")))

        def body_file(name: str, bodies: list[str]) -> Path:
            path = files / name
            path.write_text("\n".join(bodies) + "\n")
            return path

        tag = uuid.uuid4().hex[:8]
        one = [chat_body(f"Name a colour. {tag}")]
        many = [chat_body(f"Name a colour, {i}. {tag}") for i in range(mode.many_keys)]
        streamed = [chat_body(f"Tell a short story. {tag}", stream=True)]
        template = [chat_body("Count to three. __N__")]
        hit_load = Load("post.lua", body_file("one.txt", one), "HIT")
        many_load = Load("rotate.lua", body_file("many.txt", many), "HIT")
        stream_load = Load("post.lua", body_file("stream.txt", streamed), "HIT")
        miss_load = Load("unique.lua", body_file("miss.txt", template), "MISS")

        def verify(server: Server, bodies: list[str] | None) -> str:
            """Before a run: hit bodies are stored (first pass), then must each answer HIT;
            for a miss workload, a fresh body must answer MISS (proxies and the gateway)."""
            role = bench.roles[server.name]
            state = gateway.cache_state if role == "gateway" else repro_cache
            is_gw = role == "gateway"
            if bodies is None:
                if role not in ("proxy", "gateway"):
                    return ""
                probe = [chat_body(f"probe {uuid.uuid4().hex}")]
                gather(send_all(server.url, probe, "MISS", cache_state=state))
                how = f" (no {gateway.HIT_HEADER})" if is_gw else ""
                return f"a fresh body answered 200 MISS{how} before the run"
            gather(send_all(server.url, bodies, None, cache_state=state))
            seen = gather(send_all(server.url, bodies, "HIT", cache_state=state))
            how = f" ({gateway.HIT_HEADER})" if is_gw else ""
            log(f"    verified {server.name}: {sum(seen.values())} bodies, all HIT{how}")
            return f"{len(bodies)} bodies each answered 200 HIT{how} before the run"

        with_gw = {  # (target, floor, ratio kind, aux) of the gateway's runs, with --gateway
            GATEWAY_HIT_WORKLOAD: [(gw, None, None, REDIS)] if gw else [],
            GATEWAY_MISS_WORKLOAD: [(gw, None, None, SIM_REDIS)] if gw else [],
        }

        plan: list[tuple[str, list[tuple[Server, Server | None, str | None, tuple[str, ...]]],
                         list[str] | None, Load]] = [
            ("hit (memory)", [(dict_floor, None, None, ()), (mem, dict_floor, "memory", ())],
             one, hit_load),
            ("hit (Redis)", [(rget_floor, None, None, REDIS),
                             (red, rget_floor, "redis", REDIS),
                             *with_gw["hit (Redis)"]], one, hit_load),
            ("hit (Redis, near-cache off)",
             [(rget_floor, None, None, REDIS),
              (red_nn, rget_floor, "redis_no_near", REDIS)], one, hit_load),
            ("hit many keys (memory)", [(dict_floor, None, None, ()),
                                        (mem, dict_floor, "memory", ())], many, many_load),
            ("hit many keys (Redis)", [(rget_floor, None, None, REDIS),
                                       (red, rget_floor, "redis", REDIS)],
             many, many_load),
            ("hit many keys (Redis, near-cache off)",
             [(rget_floor, None, None, REDIS),
              (red_nn, rget_floor, "redis_no_near", REDIS)], many, many_load),
            ("streaming hit (memory)", [(dict_floor, None, None, ()),
                                        (mem, dict_floor, "memory", ())], streamed,
             stream_load),
            ("streaming hit (Redis)", [(rget_floor, None, None, REDIS),
                                       (red, rget_floor, "redis", REDIS)], streamed,
             stream_load),
            ("miss (memory)", [(sim, None, None, ()), (pass_floor, None, None, SIM),
                               (mem, pass_floor, "miss", SIM)], None, miss_load),
            ("miss (Redis)", [(pass_floor, None, None, SIM_REDIS),
                              (red, pass_floor, "miss", SIM_REDIS), *with_gw["miss (Redis)"]],
             None, miss_load),
        ]  # fmt: skip
        for workload, targets, bodies, load, number in (
            (*step, number) for step in plan for number in range(1, args.rounds + 1)
        ):
            if not wanted(workload):
                continue
            log(f"bench: {workload}")
            # Every other round the other way round: no target always runs first (or last).
            for server, floor, kind, aux in targets if number % 2 else targets[::-1]:
                links = {
                    "floor": floor.name if floor else None,
                    "ratio_kind": kind,
                    "aux": aux,
                    "round": number,
                }
                try:
                    note = verify(server, bodies)
                except (BenchError, aiohttp.ClientError, TimeoutError) as exc:
                    error = f"verification before the run: {exc}"
                    bench.runs.append(
                        Run(workload, server.name, bench.roles[server.name], error=error, **links)
                    )
                    log(f"    ERROR {server.name}: {error}")
                    continue
                run = bench.measure(workload, server.name, load, **links)
                if not run.ok:  # once more; the first failure stays in the results
                    bench.runs.remove(run)
                    log("    measuring once more")
                    retry = bench.measure(workload, server.name, load, **links)
                    retry.retried_after, run = run.error, retry
                if run.ok and note:
                    run.verified = f"{note}; {run.verified}"

        ttfb_result: dict[str, Any] | None = None
        if wanted("streaming miss TTFB"):
            log("bench: streaming miss TTFB")
            try:
                ttfb_result = ttfb(sim, relay, pass_floor, [mem, red], mode.ttfb_requests)
            except (httpx.HTTPError, RuntimeError) as exc:
                ttfb_result = {"requests": mode.ttfb_requests, "ok": False, "error": str(exc)}
            if not ttfb_result["ok"]:
                log(f"    ERROR: {ttfb_result.get('error')}")
        for server in servers.values():
            if server.proc.poll() is not None:
                raise BenchError(f"{server.name} died during the benchmark:\n" + server.log_tail())
    summary = ratios(bench.runs)
    over_rounds = medians(summary) if args.rounds > 1 else None
    errors = [f"{r.workload} | {r.target}: {r.error}" for r in bench.runs if not r.ok]
    if ttfb_result is not None and not ttfb_result["ok"]:
        errors.append(f"streaming miss TTFB: {ttfb_result.get('error')}")
    return {
        "ok": not errors,
        "errors": errors,
        "mode": mode.name,
        "config": {
            "duration_s": mode.duration,
            "warmup_s": mode.warmup,
            "many_keys": mode.many_keys,
            "wrk": wrk_version,
            "threads": args.threads,
            "connections": args.connections,
            "proxy_args": args.proxy_args,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "body": one[0],
            "elapsed_s": round(time.monotonic() - started_at, 1),
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
        },
        "reference": REFERENCE,
        "runs": [run.__dict__ for run in bench.runs],
        "ratios": summary,
        "rounds": args.rounds,
        "medians": over_rounds,
        "gateway": gateway_summary(install, bench.runs, over_rounds or summary),
        "ttfb": ttfb_result,
        "profiles": bench.profiles,
    }


# --- output --------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def table(result: dict[str, Any]) -> str:
    config = result["config"]
    runs = result["runs"]
    measured_gw = (result.get("gateway") or {}).get("name")
    wl = max([24, *(len(run["workload"]) + 2 for run in runs)])  # column widths
    rounds = result.get("rounds", 1)
    label = (
        (lambda run: f"{run['target']} #{run['round']}")
        if rounds > 1
        else (lambda run: run["target"])
    )
    tg = max([20, *(len(label(run)) + 2 for run in runs)])
    lines = [
        f"repro-proxy bench ({result['mode']}): wrk {config['threads']} thread, "
        f"{config['connections']} connections, {config['duration_s']} s per run "
        f"(after {config['warmup_s']} s warm-up), {config['cpus']} CPUs, "
        f"Python {config['python']}; many keys = {config['many_keys']} bodies"
        + (f"; proxies started with {config['proxy_args']}" if config.get("proxy_args") else ""),
        "load average (1 min) {:.1f} before the run{}".format(
            config["load_average_before"][0],
            ": other processes share the CPUs, figures are noisy"
            if config["load_average_before"][0] > (config["cpus"] or 1) / 2
            else "",
        ),
        *(
            [
                f"gateway: {measured_gw} (litellm[proxy], its own venv {result['gateway']['venv']}"
                f"), one worker, Redis cache in db {gateway.REDIS_DB}"
            ]
            if measured_gw
            else []
        ),
        "",
        f"{'workload':<{wl}}{'target':<{tg}}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'CPU us/req':>11}{'+aux us':>9}{'vs floor':>10}{'vs gateway':>11}{'other%':>8}",
    ]
    previous = None
    for run in runs:
        if previous is not None and run["workload"] != previous:
            lines.append("")
        previous = run["workload"]
        head = f"{run['workload']:<{wl}}{label(run):<{tg}}"
        if not run["ok"]:
            lines.append(head + f"ERROR: {run['error']}"[:200])
            continue
        aux = run["aux_cpu_us_per_req"]
        lines.append(
            head
            + f"{run['req_s']:>9,.0f}{run['p50_ms']:>8.2f}{run['p99_ms']:>8.2f}"
            + f"{run['cpu_us_per_req']:>11.1f}{fmt(aux, '.1f'):>9}"
            + f"{fmt(run['ratio_floor'], '.2f', 'x') if run['role'] == 'proxy' else '':>10}"
            + f"{fmt(run['ratio_gateway'], ',.0f', 'x') if run['role'] == 'proxy' else '':>11}"
            + f"{run['other_cpu_pct']:>8.0f}"
        )
    split = [
        f"  {run['workload']}, {label(run)}: "
        + " + ".join(f"{name} {us:.1f}" for name, us in run["aux_cpu_us_by_process"].items())
        for run in runs
        if run["ok"] and len(run["aux_cpu_us_by_process"]) > 1
    ]
    lines += [
        "",
        "+aux us: CPU per request of the other processes doing the work: redis-server (Redis",
        "hits), the sim (misses), both for the Redis miss, split here:",
        *split,
        "other%: share of the machine's CPU used by processes outside the run (noise).",
        "CPU/req ratio: the floor's CPU per request over the proxy's; it holds up better than",
        "req/s when other processes share the CPUs (req/s then measures the scheduler too).",
        *(
            [
                f"vs gateway: over {measured_gw} measured in this run, in the workloads that",
                f"ran it ({GATEWAY_HIT_WORKLOAD}, {GATEWAY_MISS_WORKLOAD}); in the others over a "
                "popular Python",
                f"gateway's reference figures, {GATEWAY_HIT_RPS:.0f} hit req/s, "
                f"{GATEWAY_MISS_RPS:.0f} miss req/s (one worker, on the reference machine).",
            ]
            if measured_gw
            else [
                f"vs gateway: over a popular Python gateway's reference figures, "
                f"{GATEWAY_HIT_RPS:.0f} hit req/s, {GATEWAY_MISS_RPS:.0f} miss req/s (one worker)."
            ]
        ),
        f"scaled to this machine (Redis hits): over {GATEWAY_HIT_RPS:.0f} x the workload's "
        f"redis-GET floor req/s / {REFERENCE_REDIS_FLOOR_RPS:,.0f}",
        "(the floor of the reference machine); information only, the gateway target applies",
        "to the raw ratio.",
        "",
    ]
    summary = result["medians"] if rounds > 1 else result["ratios"]
    scaled_suffix = ", scaled to this machine"

    def gateway_name(r: dict[str, Any]) -> str:
        """Which gateway figure a row is over, once a run has both kinds."""
        if r.get("gateway"):
            how = "measured in this run" if r["gateway_rps"] else "its run failed, no figure"
            basis = f" ({r['gateway']}, {how})"
        else:
            basis = " (the reference figure)" if measured_gw else ""
        return f"{r['workload']}: proxy / popular gateway{basis}"

    nw = max(
        [50]
        + [len(f"{r['workload']}: proxy / {r['floor']}") + 2 for r in summary]
        + [len(f"{r['workload']}: proxy / popular gateway{scaled_suffix}") + 2 for r in summary]
        + [len(gateway_name(r)) + 2 for r in summary]
    )
    heading = f"ratio (median of {rounds} rounds)" if rounds > 1 else "ratio (same run)"
    lines.append(
        f"{heading:<{nw}}{'req/s':>8}{'CPU/req':>9}{'target':>14}"
        + ("  req/s ratio by round" if rounds > 1 else "")
    )
    for r in summary:
        target = r["target_floor"]
        name = f"{r['workload']}: proxy / {r['floor']}"
        lines.append(
            f"{name:<{nw}}{fmt(r['ratio_floor'], '.2f', 'x'):>8}"
            f"{fmt(r['cpu_ratio_floor'], '.2f', 'x'):>9}"
            f"{('>= ' + format(target, '.1f') + 'x') if target else '':>14}"
            + ("  " + " ".join(fmt(x, ".2f") for x in r["rounds"]) if rounds > 1 else "")
        )
        if r["target_gateway"] or r.get("gateway"):  # the target's row, or a measured gateway
            target = r["target_gateway"]
            lines.append(
                f"{gateway_name(r):<{nw}}{fmt(r['ratio_gateway'], ',.0f', 'x'):>8}"
                f"{fmt(r['cpu_ratio_gateway'], ',.0f', 'x') if r.get('gateway') else '':>9}"
                f"{('>= ' + format(target, '.0f') + 'x') if target else '':>14}"
            )
        if r.get("reference_floor_rps"):  # the Redis hit workloads: information only
            name = f"{r['workload']}: proxy / popular gateway{scaled_suffix}"
            scale = (
                f"(scaled by floor {r['floor_rps']:,.0f}/{r['reference_floor_rps']:,.0f})"
                if r["floor_rps"]
                else "(no floor figure to scale by)"
            )
            lines.append(
                f"{name:<{nw}}{fmt(r['ratio_gateway_scaled'], ',.0f', 'x'):>8}{'':>9}"
                f"{'info only':>14}  {scale}"
            )
    ttfb_result = result.get("ttfb")
    if ttfb_result:
        lines += ["", f"streaming miss, time to first byte ({ttfb_result['requests']} each, ms)"]
        if not ttfb_result["ok"]:
            lines.append(f"  ERROR: {ttfb_result.get('error')}")
        else:
            lines.append(
                f"{'':<26}{'p50':>8}{'p99':>8}{'p50 - direct':>14}{'paired p50':>12}"
                f"{'p50 - floor':>13}"
            )
            d = ttfb_result["direct"]
            lines.append(f"  {'direct to sim':<24}{d['p50_ms']:>8.2f}{d['p99_ms']:>8.2f}")
            for name, t in ttfb_result.items():
                if isinstance(t, dict) and "delta_p50_ms" in t:
                    lines.append(
                        f"  {name:<24}{t['p50_ms']:>8.2f}{t['p99_ms']:>8.2f}"
                        f"{t['delta_p50_ms']:>14.2f}{t['paired_delta_p50_ms']:>12.2f}"
                        + (
                            ""
                            if t.get("floor")
                            else f"{t['over_floor_p50_ms']:>13.2f}"
                            f"   (target: p50 - direct within {TARGETS['ttfb_ms']:.0f} ms)"
                        )
                    )
            lines.append(
                "  byte relay: a hop that copies bytes and parses no HTTP (bench/floors.py): the "
                "loopback and"
            )
            lines.append("  the wake-ups of one more process, and nothing else;")
            lines.append(
                "  pass-through floor: one bare aiohttp hop relaying the stream chunk by chunk "
                "(bench/floors.py);"
            )
            lines.append(
                "  p50 - floor is what the proxy adds over the least a Python HTTP hop costs here."
            )
    for name, prof in result.get("profiles", {}).items():
        lines += ["", f"py-spy: {name} ({prof['samples']} samples, {prof['file']})"]
        lines.append(f"  {'self %':>7}  function")
        lines += [f"  {share:>7.1f}  {func}" for func, share in prof["self"]]
        lines.append(f"  {'cum %':>7}  function")
        lines += [f"  {share:>7.1f}  {func}" for func, share in prof["cumulative"]]
    retried = [r for r in result["runs"] if r["retried_after"]]
    if retried:
        lines += ["", f"{len(retried)} run(s) failed verification once and were measured again:"]
        lines += [f"  {r['workload']} | {r['target']}: {r['retried_after']}" for r in retried]
    lines += ["", "verification: " + ("passed" if result["ok"] else "FAILED")]
    lines += [f"  {e}" for e in result["errors"]]
    lines.append(f"elapsed {config['elapsed_s']} s")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--short", action="store_true", help="a few seconds per workload (default)")
    size.add_argument("--full", action="store_true", help="warm-up + 10 s per workload")
    parser.add_argument("--json", action="store_true", help="results as JSON on stdout")
    parser.add_argument("--duration", type=int, help="seconds per measured run (override)")
    parser.add_argument("--many-keys", type=int, help="distinct bodies of 'hit many keys'")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every workload this many times, alternating which target goes first; "
        "the ratios are then the medians over the rounds (1)",
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument(
        "--only", action="append", help="run only workloads whose name contains this (repeatable)"
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy the proxy during its runs; collapsed stacks here"
    )
    parser.add_argument("--keep-logs", type=Path, help="keep the processes' logs in this folder")
    parser.add_argument(
        "--proxy-args",
        default="",
        help="more options for every proxy the bench starts, as one string, to see what a "
        "setting costs (for example --proxy-args '--compression 0')",
    )
    parser.add_argument(
        "--gateway",
        action="store_true",
        help=f"also measure {gateway.NAME} with its Redis cache (hit and miss, Redis); the "
        "first use installs it into its own venv under ~/.cache (downloads packages)",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.profile and not shutil.which("py-spy"):
        parser.error("--profile needs py-spy (pip install py-spy)")

    def stop(signum: int, _: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        result = run_bench(args)
    except BenchError as exc:
        log(f"bench: {exc}")
        return 1
    rendered = table(result)
    if args.json:
        print(rendered, file=sys.stderr, flush=True)
        print(json.dumps(result, indent=1))
    else:
        print(rendered)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
