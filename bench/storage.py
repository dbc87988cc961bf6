"""Bytes per stored answer, and what compressing them costs in throughput, in one run.

    python bench/storage.py                       # bytes, then a short throughput comparison
    python bench/storage.py --seconds 10 --rounds 3   # throughput on a quiet machine
    python bench/storage.py --bytes-only          # bytes alone (not a timing: any machine will do)
    python bench/storage.py --choices 1           # shorter answers (n=1: 12-30 words)
    python bench/storage.py --json                # results as JSON on stdout (the table on stderr)

It starts, on free 127.0.0.1 ports, `repro-proxy sim`, a redis-server of its own and the proxy
five times: on redis:// with compression and its dictionary (db 0), with zstd alone
(`--compression-dictionary 0`, db 2) and with `--compression 0` (db 1); on memory:// with
compression and its dictionary, and with `--compression 0`. The dictionary is trained after
100 answers rather than the default 1000, so that the prose at hand suffices (fewer samples make
a weaker dictionary, so the figures err on the safe side): the bench first sends those answers
(prose of their own), then checks that new entries name the dictionary. Prompts are prose of
1-2 KB, each a distinct slice of Python's own reference documentation (pydoc_data), never
repeated text; every request asks n=4 choices, so that the sim's answer comes close to ~100
tokens, as in bench/bench.py.

Bytes: the same chat requests (then streamed ones) go to the three Redis proxies; each entry is
weighed with `MEMORY USAGE <key> SAMPLES 0` (every field counted) and set against the raw bytes
it stands for: the request the upstream received plus the answer for a chat entry (as the
targets say), the stream's own bytes for a streamed one. The CPU of compressing each chat entry,
with zstd alone and with the dictionary, is measured beside.

Throughput: wrk (1 thread, 64 connections) drives a hit workload (one stored prose request) and
a miss workload (a unique prose request each time) at the proxy with compression and without, in
alternating order per round; the ratio is req/s with compression over req/s without (median over
rounds), with the CPU each proxy spent per request beside it, which holds up better on a busy
machine. Hits are checked before they are measured, and wrk must see no error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import redis
import zstandard

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
import bench  # noqa: E402  (processes, wrk and CPU helpers of bench/bench.py)
from proxy.core.codec import ZSTD_DICTIONARY, Codec  # noqa: E402

TARGETS = {
    "chat": 0.5,  # Redis bytes per chat entry over the raw request + answer bytes, at most
    "stream": 0.15,  # Redis bytes per streamed entry over the stream's bytes, at most
    "hit": 0.95,  # hit req/s with compression over without, at least
    "miss": 0.95,  # miss req/s with compression over without, at least
}
TRAIN_AFTER = 100  # --compression-dictionary of the bench's proxies (the default is 1000)
# Where in the prose each part of the run takes its passages, so that none repeats another's.
PROSE_TRAINING, PROSE_PROBES, PROSE_WORKLOADS = 250_000, 400_000, 425_000


def prose(count: int, offset: int = 0) -> list[str]:
    """`count` distinct prose passages of 1-2 KB, cut at word boundaries."""
    from pydoc_data.topics import topics

    text = " ".join(" ".join(topics[name].split()) for name in sorted(topics))
    passages, at = [], offset
    for number in range(count):
        size = 1000 + (number * 397) % 1000
        start = text.find(" ", at) + 1
        end = text.rfind(" ", start, start + size)
        passages.append(text[start:end])
        at = end
        if at + 2000 > len(text):
            raise SystemExit("storage: not enough prose for that many entries")
    return passages


def chat(content: str, choices: int, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": bench.MODEL,
        "messages": [{"role": "user", "content": content}],
    }
    if choices != 1:
        body["n"] = choices
    if stream:
        body["stream"] = True
    return body


def fill(proxy: bench.Server, bodies: list[dict[str, Any]]) -> list[str]:
    """Send each body once (each must be a MISS) and return the cache keys."""
    keys = []
    with httpx.Client(headers=bench.AUTH, timeout=30) as client:
        for body in bodies:
            response = client.post(proxy.url + "/chat/completions", json=body)
            cache = response.headers.get("X-Repro-Cache")
            if response.status_code != 200 or cache != "MISS":
                key = response.headers.get("X-Repro-Key")
                raise bench.BenchError(
                    f"{proxy.name}: expected a 200 MISS, got {response.status_code} {cache} "
                    f"(key {key}, request {len(keys) + 1} of {len(bodies)})"
                )
            keys.append(response.headers["X-Repro-Key"])
    return keys


def weigh(client: redis.Redis, keys: list[str], stream: bool) -> dict[str, float]:
    """Redis bytes of the entries against the raw bytes they stand for."""
    codec = Codec()
    dictionary = client.get("repro:dictionary")
    if dictionary is not None:
        codec.use(dictionary)
    stored = raw = 0
    for key in keys:
        name = f"repro:e:{{{key}}}"
        stored += int(client.execute_command("MEMORY", "USAGE", name, "SAMPLES", "0"))
        entry = codec.unpack(_value(client.hgetall(name)))
        raw += len(entry.body) if stream else len(entry.body) + len(entry.request)
    return {"entries": len(keys), "stored": stored / len(keys), "raw": raw / len(keys)}


def _value(fields: dict[bytes, bytes]) -> bytes:
    return next(value for name, value in fields.items() if not name.startswith(b"\0"))


def train_dictionaries(servers: list[bench.Server], redis_port: int, choices: int) -> None:
    """Send the proxies that train a dictionary enough distinct answers to train it from, and
    wait (bounded) until the Redis one writes with it."""
    bodies = [chat(text, choices) for text in prose(TRAIN_AFTER, offset=PROSE_TRAINING)]
    for server in servers:
        fill(server, bodies)
    probe = prose(10, offset=PROSE_PROBES)
    with redis.Redis(port=redis_port, db=0) as client:
        for text in probe:
            (key,) = fill(servers[0], [chat(text, choices)])
            if _value(client.hgetall(f"repro:e:{{{key}}}"))[1] == ZSTD_DICTIONARY:
                return
            time.sleep(0.2)
    raise bench.BenchError("the proxy did not train its dictionary")


def measure_bytes(
    proxies: list[tuple[bench.Server, int, bool]], redis_port: int, count: int, choices: int
) -> list[Any]:
    """`proxies`: each Redis proxy, its db, and whether the targets apply to it."""
    rows = []
    passages = prose(2 * count)
    for kind, texts in (("chat", passages[:count]), ("stream", passages[count:])):
        bodies = [chat(text, choices, stream=kind == "stream") for text in texts]
        for server, db, targeted in proxies:
            keys = fill(server, bodies)
            with redis.Redis(port=redis_port, db=db) as client:
                row = weigh(client, keys, stream=kind == "stream")
            row.update(kind=kind, proxy=server.name, ratio=row["stored"] / row["raw"])
            row["compressed"] = targeted
            rows.append(row)
            bench.log(f"bytes: {kind} via {server.name}: {row['ratio']:.3f}x")
    return rows


def compression_cpu(redis_port: int) -> dict[str, float]:
    """CPU per entry of zstd alone and with the store's dictionary, on the chat entries the
    zstd-only proxy stored (db 2), best of three passes: what the dictionary costs or saves."""
    with redis.Redis(port=redis_port, db=2) as plain, redis.Redis(port=redis_port) as trained:
        names = list(plain.scan_iter(match="repro:e:*", count=500))
        blobs = [_value(plain.hgetall(name)) for name in names]
        dictionary = trained.get("repro:dictionary")
    payloads = [zstandard.ZstdDecompressor().decompress(blob[6:]) for blob in blobs]
    options: dict[str, Any] = {"level": 1, "write_checksum": False, "write_dict_id": False}
    alone = zstandard.ZstdCompressor(**options)
    shared = zstandard.ZstdCompressionDict(dictionary or b"")
    with_dictionary = zstandard.ZstdCompressor(dict_data=shared, **options)
    return {"zstd": _cpu_us(alone, payloads), "dictionary": _cpu_us(with_dictionary, payloads)}


def _cpu_us(compressor: zstandard.ZstdCompressor, payloads: list[bytes]) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for payload in payloads:
            compressor.compress(payload)
        best = min(best, time.process_time() - started)
    return best * 1e6 / len(payloads)


def workload_bodies(folder: Path, choices: int) -> dict[str, Path]:
    """One stored prose request (hit) and a template for unique ones (miss, see unique.lua)."""
    hit_text, miss_text = prose(2, offset=PROSE_WORKLOADS)
    paths = {"hit": folder / "hit.jsonl", "miss": folder / "miss.jsonl"}
    paths["hit"].write_text(json.dumps(chat(hit_text, choices)) + "\n")
    paths["miss"].write_text(json.dumps(chat("__N__ " + miss_text, choices)) + "\n")
    return paths


def check_hit(server: bench.Server, path: Path) -> None:
    body = path.read_text().strip()
    with httpx.Client(headers=bench.AUTH, timeout=30) as client:
        for _ in range(2):
            answer = client.post(server.url + "/chat/completions", content=body)
    if answer.status_code != 200 or answer.headers["X-Repro-Cache"] != "HIT":
        raise bench.BenchError(f"{server.name}: the hit body is not a HIT")


def run(server: bench.Server, load: bench.Load, seconds: int) -> dict[str, float]:
    before = bench.cpu_ticks(server.pid)
    figures = bench.run_wrk(server.url, load, seconds, threads=1, connections=64)
    spent = (bench.cpu_ticks(server.pid) - before) / bench.CLK_TCK
    errors = {k: v for k, v in figures["errors"].items() if v}
    if errors or not figures["requests"]:
        raise bench.BenchError(f"{server.name}: wrk saw {errors} in {figures['requests']}")
    seconds_run = figures["duration_us"] / 1e6
    return {
        "rps": figures["requests"] / seconds_run,
        "cpu_us": spent * 1e6 / figures["requests"],
    }


def measure_throughput(
    pairs: dict[str, tuple[bench.Server, bench.Server]], bodies: dict[str, Path], args: Any
) -> list[dict[str, Any]]:
    rows = []
    for store, (on, off) in pairs.items():
        for kind in ("hit", "miss"):
            load = bench.Load(
                "post.lua" if kind == "hit" else "unique.lua", bodies[kind], kind.upper()
            )
            if kind == "hit":
                check_hit(on, bodies["hit"])
                check_hit(off, bodies["hit"])
            ratios, cpu_ratios, last = [], [], {}
            for number in range(args.rounds):
                order = [("on", on), ("off", off)]
                if number % 2:
                    order.reverse()
                last = {name: run(server, load, args.seconds) for name, server in order}
                ratios.append(last["on"]["rps"] / last["off"]["rps"])
                cpu_ratios.append(last["on"]["cpu_us"] / last["off"]["cpu_us"])
            row = {
                "workload": f"{kind}, {store}",
                "kind": kind,
                "rps_on": last["on"]["rps"],
                "rps_off": last["off"]["rps"],
                "cpu_us_on": last["on"]["cpu_us"],
                "cpu_us_off": last["off"]["cpu_us"],
                "ratio": statistics.median(ratios),
                "cpu_ratio": statistics.median(cpu_ratios),
            }
            rows.append(row)
            bench.log(f"throughput: {row['workload']}: {row['ratio']:.2f}x")
    return rows


def table(result: dict[str, Any]) -> str:
    lines = [
        "Redis bytes per entry (MEMORY USAGE) over the raw bytes it stands for "
        f"(n={result['choices']})",
        f"{'entries':<8} {'proxy':<32} {'stored B':>9} {'raw B':>8} {'ratio':>7} {'target':>8}",
    ]
    for row in result["bytes"]:
        target = TARGETS[row["kind"]]
        mark = "ok" if row["ratio"] <= target else "MISSED"
        shown = f"<={target}x {mark}" if row["compressed"] else ""
        lines.append(
            f"{row['kind']:<8} {row['proxy']:<32} {row['stored']:>9.0f} {row['raw']:>8.0f} "
            f"{row['ratio']:>6.3f}x {shown}"
        )
    cpu = result["compression_cpu"]
    lines += [
        "",
        f"CPU per chat entry compressed: zstd alone {cpu['zstd']:.1f} us, with the store's "
        f"dictionary {cpu['dictionary']:.1f} us",
    ]
    if result["throughput"]:
        lines += [
            "",
            f"Throughput with compression over without ({result['rounds']} round(s) of "
            f"{result['seconds']} s, median)",
            f"{'workload':<16} {'req/s on':>9} {'req/s off':>10} {'ratio':>7} "
            f"{'CPU us on':>10} {'CPU us off':>11} {'CPU ratio':>10} {'target':>12}",
        ]
        for row in result["throughput"]:
            target = TARGETS[row["kind"]]
            mark = "ok" if row["ratio"] >= target else "MISSED"
            lines.append(
                f"{row['workload']:<16} {row['rps_on']:>9,.0f} {row['rps_off']:>10,.0f} "
                f"{row['ratio']:>6.2f}x {row['cpu_us_on']:>10.0f} {row['cpu_us_off']:>11.0f} "
                f"{row['cpu_ratio']:>9.2f}x {'>=' + str(target) + 'x ' + mark:>12}"
            )
    lines.append(f"load before: {result['load_before']}, after: {result['load_after']}")
    return "\n".join(lines)


def run_storage(args: argparse.Namespace) -> dict[str, Any]:
    redis_binary = shutil.which("redis-server")
    if redis_binary is None:
        raise SystemExit("storage: redis-server not found on PATH (apt-get install redis-server)")
    if not args.bytes_only:
        bench.need_wrk()
    load_before = [round(x, 2) for x in os.getloadavg()]
    py = sys.executable
    with ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="repro-storage-")))
        ports = {
            name: bench.free_port()
            for name in ("sim", "redis", "ron", "rzstd", "roff", "mon", "moff")
        }

        def start(name: str, argv: list[str], key: str) -> bench.Server:
            if key not in ("sim", "redis"):
                argv = [*argv, "--port", str(ports[key])]
            return stack.enter_context(bench.started(name, argv, ports[key], logs))

        sim = start("sim", [py, "-m", "proxy", "sim", "--port", str(ports["sim"])], "sim")
        redis_argv = [redis_binary, "--port", str(ports["redis"]), "--bind", "127.0.0.1"]
        redis_argv += ["--save", "", "--appendonly", "no", "--dir", str(logs)]
        for setting in args.redis_config:
            name, _, value = setting.partition("=")
            redis_argv += [f"--{name}", value]
        redis_server = start("redis-server", redis_argv, "redis")
        bench.wait_redis(redis_server)
        bench.wait_http(sim, "/_sim/settings")
        url = f"redis://127.0.0.1:{ports['redis']}"
        serve = [py, "-m", "proxy", "serve", "--upstream", sim.url]
        off = ["--compression", "0"]
        trains = ["--compression-dictionary", str(TRAIN_AFTER)]
        alone = ["--compression-dictionary", "0"]
        servers = {
            "ron": start("proxy redis://", [*serve, "--store", url + "/0", *trains], "ron"),
            "rzstd": start(
                "proxy redis://, no dictionary", [*serve, "--store", url + "/2", *alone], "rzstd"
            ),
            "roff": start(
                "proxy redis:// --compression 0", [*serve, "--store", url + "/1", *off], "roff"
            ),
            "mon": start("proxy memory://", [*serve, *trains], "mon"),
            "moff": start("proxy memory:// --compression 0", [*serve, *off], "moff"),
        }
        for server in servers.values():
            bench.wait_http(server, "/healthz")
        result: dict[str, Any] = {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "choices": args.choices,
        }
        train_dictionaries([servers["ron"], servers["mon"]], ports["redis"], args.choices)
        proxies = [(servers["ron"], 0, True), (servers["rzstd"], 2, False)]
        proxies.append((servers["roff"], 1, False))
        result["bytes"] = measure_bytes(proxies, ports["redis"], args.entries, args.choices)
        result["compression_cpu"] = compression_cpu(ports["redis"])
        result["throughput"] = []
        if not args.bytes_only:
            pairs = {
                "memory": (servers["mon"], servers["moff"]),
                "Redis": (servers["ron"], servers["roff"]),
            }
            result["throughput"] = measure_throughput(
                pairs, workload_bodies(logs, args.choices), args
            )
    result["load_before"] = load_before
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    result["date"] = time.strftime("%Y-%m-%d")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=80, help="chat and streamed entries (80)")
    parser.add_argument("--seconds", type=int, default=3, help="seconds per wrk run (3)")
    parser.add_argument("--rounds", type=int, default=1, help="throughput rounds (1)")
    parser.add_argument(
        "--choices",
        type=int,
        default=4,
        help="n of each request (4: the sim's answer is then ~100 tokens, as in bench/bench.py)",
    )
    parser.add_argument("--bytes-only", action="store_true", help="skip the throughput runs")
    parser.add_argument(
        "--redis-config",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a redis-server setting for its Redis (repeatable), e.g. hash-max-listpack-value=4096",
    )
    parser.add_argument("--json", action="store_true", help="results as JSON on stdout")
    args = parser.parse_args()
    try:
        result = run_storage(args)
    except bench.BenchError as exc:
        bench.log(f"storage: {exc}")
        return 1
    rendered = table(result)
    print(rendered, file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
