"""CPU per request of the proxy and its floor, each pinned to a core of its own.

    python bench/pinned.py miss                      # memory miss vs the pass-through floor
    python bench/pinned.py hit-many --rounds 5       # memory HIT, 4000 keys, vs the dict floor
    python bench/pinned.py miss --against ../other   # also another checkout of the proxy (A/B)
    python bench/pinned.py miss --also caching       # also a minimal caching proxy

On a shared machine req/s measures the scheduler as much as the code; the CPU a server spends per
request moves far less. The server under test gets the first core of this process's affinity,
alone; wrk and the sim share the second. Each round starts every server afresh (a miss's store
never carries over), warms it, then reads its CPU time from `/proc` around one wrk run and
divides by the requests served; the order of the servers alternates from round to round. The
ratio printed is the floor's CPU per request over the proxy's, the req/s ratio the two would
have where the server is the bottleneck, as in bench/bench.py.

Workloads (bench/bench.py's, one at a time): `hit`, `hit-many`, `hit-stream` (memory store, over
the dict floor), `miss` (memory store, a body never seen before on every request) and
`passthrough` (`GET /v1/models`, not cached), both over the pass-through floor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from procs import cpu_seconds, free_port, stop, wait_until_up  # noqa: E402

import bench  # noqa: E402  (bodies, wrk, the checks before a run)

SECRET = "pinned-bench-secret-0123456789"
MANY_KEYS = 4000


@dataclass(frozen=True)
class Workload:
    floor: str  # bench/floors.py's kind
    load: str  # bench/wrk script, or "" for GETs of `path`
    bodies: Callable[[str], list[str]]  # from a tag unique to the run
    expect: str | None  # X-Repro-Cache of every request, checked before the runs
    path: str = "/v1/chat/completions"


WORKLOADS = {
    "hit": Workload("dict", "post.lua", lambda t: [bench.chat_body(f"Name a colour. {t}")], "HIT"),
    "hit-many": Workload(
        "dict",
        "rotate.lua",
        lambda t: [bench.chat_body(f"Name a colour, {i}. {t}") for i in range(MANY_KEYS)],
        "HIT",
    ),
    "hit-stream": Workload(
        "dict",
        "post.lua",
        lambda t: [bench.chat_body(f"Tell a short story. {t}", stream=True)],
        "HIT",
    ),
    "miss": Workload("passthrough", "unique.lua", lambda t: [bench.chat_body("Count __N__")], None),
    "passthrough": Workload("passthrough", "", lambda t: [], None, "/v1/models"),
}


def cores() -> tuple[int, int]:
    """The server's core, and the one wrk and the sim share."""
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        raise SystemExit("bench/pinned.py: needs two cores (one for the server, one for the load)")
    return usable[0], usable[1]


@contextmanager
def running(argv: list[str], core: int, cwd: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """ARGV pinned to CORE from its first instruction (its threads inherit the affinity)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPRO_")}
    env["REPRO_SECRET"] = SECRET
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, {core}),
        )
    try:
        yield proc
    finally:
        stop(proc)


def wrk(url: str, work: Workload, bodies: Path, seconds: int) -> int:
    """Requests wrk got answered in SECONDS (64 connections, one thread), on this process's core."""
    if work.load:
        load = bench.Load(work.load, bodies, work.expect or "MISS")
        figures = bench.run_wrk(url + "/v1", load, seconds, 1, 64)
        errors = {k: v for k, v in figures["errors"].items() if v}
        if errors:
            raise bench.BenchError(f"wrk saw errors: {errors}")
        return int(figures["requests"])
    auth = f"Authorization: Bearer {bench.API_KEY}"
    command = ["wrk", "-t1", "-c64", f"-d{seconds}s", "-H", auth]
    done = subprocess.run(
        [*command, url + work.path], capture_output=True, text=True, timeout=seconds + 60
    )
    for line in done.stdout.splitlines():
        if "requests in" in line:
            return int(line.split()[0])
    raise bench.BenchError(f"wrk gave no figures:\n{done.stdout}{done.stderr}")


def measure(
    name: str, argv: list[str], cwd: Path, core: int, files: Path, args: argparse.Namespace
) -> float:
    """One fresh server's CPU microseconds per request, the server pinned to CORE."""
    work = WORKLOADS[args.workload]
    port = free_port()
    argv = [*argv, "--port", str(port)]
    tag = uuid.uuid4().hex[:8]
    bodies = files / f"{tag}.txt"
    listed = work.bodies(tag)
    bodies.write_text("\n".join(listed) + "\n")
    url = f"http://127.0.0.1:{port}"
    with running(argv, core, cwd, files / f"{tag}.log") as proc:
        wait_until_up(url + "/healthz", proc)
        if work.expect is not None:  # stored on the first pass, HITs on the second
            bench.gather(bench.send_all(url + "/v1", listed, None))
            bench.gather(bench.send_all(url + "/v1", listed, work.expect))
        wrk(url, work, bodies, 2)
        before = cpu_seconds(proc.pid)
        served = wrk(url, work, bodies, args.seconds)
        spent = cpu_seconds(proc.pid) - before
    us = spent * 1e6 / max(served, 1)
    bench.log(f"  {name}: {us:.1f} us/req ({served} requests)")
    return us


def run(args: argparse.Namespace) -> dict[str, Any]:
    bench.need_wrk()
    work = WORKLOADS[args.workload]
    server_core, load_core = cores()
    os.sched_setaffinity(0, {load_core})  # wrk and the sim, started from here, inherit it
    py = sys.executable
    servers: dict[str, tuple[list[str], Path]] = {}
    with ExitStack() as stack:
        files = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="repro-pinned-")))
        sim_port = free_port()
        sim = stack.enter_context(
            running(
                [py, "-m", "proxy", "sim", "--port", str(sim_port)],
                load_core,
                bench.ROOT,
                files / "sim.log",
            )
        )
        upstream = ["--upstream", f"http://127.0.0.1:{sim_port}/v1"]
        wait_until_up(f"http://127.0.0.1:{sim_port}/_sim/settings", sim)
        for name, kind in [("floor", work.floor), *((f"floor ({k})", k) for k in args.also)]:
            servers[name] = ([py, str(BENCH / "floors.py"), kind, *upstream], bench.ROOT)
        serve = [py, "-m", "proxy", "serve", *upstream, *args.proxy_args.split()]
        servers["proxy"] = (serve, bench.ROOT)
        for other in args.against:
            servers[f"proxy ({other})"] = (serve, other.resolve())
        spent: dict[str, list[float]] = {name: [] for name in servers}
        for round_ in range(args.rounds):
            bench.log(f"round {round_ + 1} of {args.rounds}")
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            for name in order:
                argv, cwd = servers[name]
                spent[name].append(measure(name, argv, cwd, server_core, files, args))
    floor = statistics.median(spent["floor"])
    return {
        "workload": args.workload,
        "date": time.strftime("%Y-%m-%d"),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "servers": {
            name: {
                "cpu_us_per_req": runs,
                "median": statistics.median(runs),
                "floor_over_it": floor / statistics.median(runs),
            }
            for name, runs in spent.items()
        },
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['workload']}: CPU us per request, pinned ({result['rounds']} rounds of "
        f"{result['seconds']} s, {result['date']})",
        f"{'server':<40} {'median':>8} {'floor/it':>9}  rounds",
    ]
    for name, figures in result["servers"].items():
        runs = " ".join(f"{us:.0f}" for us in figures["cpu_us_per_req"])
        lines.append(
            f"{name:<40} {figures['median']:>8.1f} {figures['floor_over_it']:>8.2f}x  {runs}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=3, help="runs of each server (default 3)")
    parser.add_argument("--seconds", type=int, default=6, help="seconds per run (default 6)")
    parser.add_argument(
        "--against",
        type=Path,
        action="append",
        default=[],
        help="another checkout of the proxy, measured too (repeatable)",
    )
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        choices=["caching", "dict", "passthrough"],
        help="another floor of bench/floors.py, measured too (repeatable): `caching`, the work "
        "any caching proxy does, shows how much of the proxy's distance no design of it removes",
    )
    parser.add_argument("--proxy-args", default="", help="settings for every proxy started")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds < 1:
        parser.error("--rounds and --seconds must be at least 1")
    try:
        result = run(args)
    except bench.BenchError as exc:
        print(f"bench/pinned.py: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
