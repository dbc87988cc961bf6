"""Fault injection against real processes: the cache is never why a request fails, hangs or lies.

Every test runs real `repro-proxy serve` processes against the simulated upstream and, where a
store is involved, against a redis-server of its own (never the session's shared one, since these
tests freeze, kill and cut it): stopped with SIGSTOP, killed and restarted on the same port, down
at boot, slowed or cut by `tests.faultproxy`, and a three-master cluster that loses a master.
The upstream's faults come from the sim (`hang`, `drop`, `cut`, error statuses).

Latency bounds are generous (the proxy's store deadline is 0.5 s; a request that meets a failing
store may take that plus a margin, never more), every wait is bounded, outcomes are exact.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from bench.procs import wait_until
from proxy.core.codec import Codec
from tests.faultproxy import FaultProxy
from tests.fixtures_procs import (
    Proxy,
    ProxyFactory,
    Sim,
    free_port,
    launch_proxy,
    running_proxy,
    stop,
    wait_up,
)
from tests.fixtures_redis import (
    RedisServer,
    _answers_ping,
    _binary,
    _create_cluster,
    running_redis,
)

MODEL = "gpt-4o-mini"
ROUTE = "/v1/chat/completions"
FP = "fp_sim_0001"
HEADERS = {"Authorization": "Bearer sk-faults", "Content-Type": "application/json"}
STORE_TIMEOUT = "0.5"
SLOW_BOUND = 2.5  # one request that meets a failing store: the 0.5 s deadline plus a wide margin
FAST_BOUND = 0.5  # a request while the circuit is open: no store call at all
COOLDOWN = 5.0  # the circuit breaker's, in proxy/store/guard.py
RECOVERY_BOUND = COOLDOWN + 5.0
# A node timeout far above the test's length: the dead master is never declared failed while the
# test runs, so the cluster stays in the state this test is about (one master gone, the others
# serving their slots). Once it is declared failed, a cluster that requires full coverage (the
# default) answers CLUSTERDOWN for every key, and the proxy then serves everything upstream.
CLUSTER_OPTIONS = (
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "60000",
)
_CLIENTS: list[httpx.Client] = []


def http() -> httpx.Client:
    """One client for the module: a fresh httpx client per request costs ~50 ms of TLS setup.
    Its timeout only detects hangs; it is far above every bound asserted here."""
    if not _CLIENTS or _CLIENTS[0].is_closed:
        _CLIENTS[:] = [httpx.Client(timeout=15)]
    return _CLIENTS[0]


@pytest.fixture(scope="module", autouse=True)
def _close_http_client() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


# --- helpers ---------------------------------------------------------------------------------


def body(prompt: str, **extra: Any) -> bytes:
    return orjson.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **extra}
    )


@dataclass(frozen=True)
class Answer:
    status: int
    cache: str
    content: bytes
    took: float
    headers: httpx.Headers

    def json(self) -> Any:
        return orjson.loads(self.content)


def ask(proxy: Proxy, prompt: str, headers: dict[str, str] | None = None) -> Answer:
    """One chat completion, timed."""
    started = time.monotonic()
    response = http().post(
        proxy.v1 + "/chat/completions", content=body(prompt), headers={**HEADERS, **(headers or {})}
    )
    took = time.monotonic() - started
    return Answer(
        response.status_code,
        response.headers.get("X-Repro-Cache", ""),
        response.content,
        took,
        response.headers,
    )


def ask_stream(proxy: Proxy, prompt: str) -> Answer:
    """One streamed chat completion read to its end, timed."""
    started = time.monotonic()
    with http().stream(
        "POST", proxy.v1 + "/chat/completions", content=body(prompt, stream=True), headers=HEADERS
    ) as response:
        content = response.read()
    return Answer(
        response.status_code,
        response.headers.get("X-Repro-Cache", ""),
        content,
        time.monotonic() - started,
        response.headers,
    )


def same_answer(a: bytes, b: bytes) -> bool:
    """Two answers of the seeded sim to one request: equal but for the per-call id and time."""
    left, right = orjson.loads(a), orjson.loads(b)
    for value in (left, right):
        del value["id"], value["created"]
    return bool(left == right)


def readyz(proxy: Proxy) -> tuple[int, Any, float]:
    started = time.monotonic()
    response = http().get(proxy.url + "/readyz")
    return response.status_code, response.json(), time.monotonic() - started


def assert_unready(proxy: Proxy) -> str:
    status, payload, took = readyz(proxy)
    assert status == 503, payload
    assert set(payload) == {"status", "reason"}
    assert payload["status"] == "unavailable"
    assert isinstance(payload["reason"], str) and payload["reason"]
    assert took < SLOW_BOUND
    return str(payload["reason"])


def assert_ready(proxy: Proxy) -> None:
    status, payload, _ = readyz(proxy)
    assert (status, payload) == (200, {"status": "ok"})


def entry_name(key: str) -> str:
    return f"repro:e:{{{key}}}"


def stored_bodies(port: int, key: str) -> dict[str, bytes]:
    """What one Redis server holds for a cache key: fingerprint -> the answer's exact bytes
    (fields named with a leading NUL are the store's own metadata, not answers)."""
    with redis.Redis(port=port, socket_timeout=2) as client:
        fields: dict[bytes, bytes] = client.hgetall(entry_name(key))
    return {
        name.decode(): Codec().unpack(blob).body
        for name, blob in fields.items()
        if not name.startswith(b"\0")
    }


def recover(proxy: Proxy, prompt: str, timeout: float = RECOVERY_BOUND) -> list[Answer]:
    """Ask the same question until it is a HIT (bounded); every answer on the way must be a 200.

    Nothing else touches the proxy meanwhile (no /readyz), so this is the circuit's own probe.
    """
    answers: list[Answer] = []
    deadline = time.monotonic() + timeout
    while not answers or answers[-1].cache != "HIT":
        if time.monotonic() > deadline:
            pytest.fail(f"no HIT within {timeout} s: {[a.cache for a in answers]}")
        if answers:
            time.sleep(0.2)
        answer = ask(proxy, prompt)
        assert answer.status == 200, answer.content
        assert answer.cache in ("MISS", "HIT")
        assert answer.took < SLOW_BOUND
        answers.append(answer)
    return answers


def warm(proxy: Proxy, prompt: str) -> Answer:
    """A MISS that stores, then a HIT of the same bytes."""
    miss, hit = ask(proxy, prompt), ask(proxy, prompt)
    assert (miss.status, miss.cache) == (200, "MISS")
    assert (hit.status, hit.cache) == (200, "HIT")
    assert hit.content == miss.content
    return miss


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class OwnRedis:
    """A redis-server of this test's own, on a port it keeps across restarts; `kill` continues a
    stopped server first, and `own_redis` always kills it at the end."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OwnRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        proc = self.proc
        wait_until(
            lambda: proc.poll() is None and _answers_ping(self.port), f"redis on {self.port}", 10
        )
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None


@contextmanager
def own_redis(directory: Path, port: int | None = None, start: bool = True) -> Iterator[OwnRedis]:
    server = OwnRedis(directory, port)
    try:
        yield server.start() if start else server
    finally:
        server.kill()


def start_redis_proxy(start_proxy: ProxyFactory, url: str, *flags: str) -> Proxy:
    """Without the near-cache, so that every request meets the faulty store (the near-cache's
    own behaviour under faults is in test_e2e_nearcache.py)."""
    return start_proxy(
        "--store", url, "--store-timeout", STORE_TIMEOUT, "--near-cache", "0", *flags
    )


@dataclass(frozen=True)
class LoggedProxy:
    proxy: Proxy
    log: Path

    def records(self) -> list[dict[str, Any]]:
        """The proxy's JSON log lines so far (its stderr)."""
        lines = self.log.read_bytes().splitlines()
        return [orjson.loads(x) for x in lines if x.startswith(b"{") and x.endswith(b"}")]

    def alarms(self) -> list[dict[str, Any]]:
        """Warnings and errors, without the access log."""
        return [
            r
            for r in self.records()
            if r["level"] in ("warning", "error", "critical") and r["logger"] != "proxy.access"
        ]


@pytest.fixture
def start_logged_proxy(sim: Sim, tmp_path: Path) -> Iterator[Callable[..., LoggedProxy]]:
    """`repro-proxy serve` like `start_proxy`, with its stderr (the JSON log) kept in a file."""
    started: list[Proxy] = []

    def start(*flags: str) -> LoggedProxy:
        log = tmp_path / f"proxy-{len(started)}.log"
        with log.open("wb") as sink:
            proxy = launch_proxy(sim.v1, *flags, stderr=sink)
        started.append(proxy)
        return LoggedProxy(wait_up(proxy), log)

    try:
        yield start
    finally:
        for proxy in started:
            stop(proxy.proc)


# --- 1. a frozen Redis (SIGSTOP) --------------------------------------------------------------


def test_frozen_redis_costs_one_store_timeout_then_nothing_and_recovers(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    with own_redis(tmp_path / "redis") as server:
        proxy = start_redis_proxy(start_proxy, server.url, "--secret", "s-sixteen-bytes!")
        stored = warm(proxy, "warm before the freeze")
        key = stored.headers["X-Repro-Key"]
        assert stored_bodies(server.port, key) == {FP: stored.content}
        assert proxy.store_errors() == {}
        sim_calls = len(sim.llm_requests())

        server.signal(signal.SIGSTOP)
        try:
            first = ask(proxy, "warm before the freeze")
            # The lookup's first store call meets the deadline and opens the circuit at once.
            assert (first.status, first.cache) == (200, "MISS")
            assert first.took < SLOW_BOUND
            assert same_answer(first.content, stored.content)
            later = [ask(proxy, p) for p in ["warm before the freeze"] * 3 + ["asked frozen"] * 2]
            for answer in later:
                assert (answer.status, answer.cache) == (200, "MISS")
                assert answer.took < FAST_BOUND, [round(a.took, 3) for a in later]
            assert all(same_answer(a.content, stored.content) for a in later[:3])
            frozen_key = later[-1].headers["X-Repro-Key"]
            streamed = ask_stream(proxy, "streamed while frozen")
            assert (streamed.status, streamed.cache) == (200, "MISS")
            assert streamed.content.endswith(b"data: [DONE]\n\n")
            assert streamed.took < FAST_BOUND
            assert len(sim.llm_requests()) == sim_calls + 7
            # Per request: the lookup's fingerprint read, the fresh answer's fingerprint and
            # its write fail (timed out once, then skipped by the open circuit).
            assert proxy.store_errors() == {"get": 7.0, "fingerprint": 7.0, "put": 7.0}
            reason = assert_unready(proxy)
            assert "0.5" in reason
            assert http().get(proxy.url + "/healthz").status_code == 200
        finally:
            server.signal(signal.SIGCONT)

        answers = recover(proxy, "warm before the freeze")
        assert answers[-1].content == stored.content
        assert all(a.cache == "MISS" for a in answers[:-1])
        assert_ready(proxy)
        # Nothing was written while frozen; the entry from before is intact.
        assert stored_bodies(server.port, key) == {FP: stored.content}
        assert stored_bodies(server.port, frozen_key) == {}
        again = [ask(proxy, "asked frozen") for _ in range(2)]
        assert [a.cache for a in again] == ["MISS", "HIT"]
        assert stored_bodies(server.port, frozen_key) == {FP: again[0].content}
        assert again[1].content == again[0].content


def test_an_outage_is_logged_once_per_state_change_not_per_request(
    start_logged_proxy: Callable[..., LoggedProxy], sim: Sim, tmp_path: Path
) -> None:
    """Issue 4: the breaker "logs once per state change". Per-request lines during an outage
    flood the log exactly when an operator needs to read it."""
    with own_redis(tmp_path / "redis") as server:
        logged = start_logged_proxy(
            "--store", server.url, "--store-timeout", STORE_TIMEOUT, "--near-cache", "0"
        )
        proxy = logged.proxy
        warm(proxy, "logged")
        assert logged.alarms() == []
        server.signal(signal.SIGSTOP)
        try:
            assert ask(proxy, "logged").status == 200  # opens the circuit
            time.sleep(0.2)
            after_first = logged.alarms()
            for _ in range(10):
                assert ask(proxy, "logged").status == 200
            time.sleep(0.2)
            after_eleven = logged.alarms()
        finally:
            server.signal(signal.SIGCONT)
        assert_ready(proxy)  # an answered ping closes the circuit
        time.sleep(0.2)
        final = logged.alarms()
    opened = [r for r in final if r["msg"] == "store circuit opened"]
    closed = [r for r in final if r["msg"].startswith("store circuit closed")]
    assert (len(opened), len(closed)) == (1, 1)
    assert len(after_eleven) == len(after_first), [
        (r["logger"], r["msg"], r.get("op")) for r in after_eleven[len(after_first) :]
    ]


# --- 2. Redis killed, then restarted empty on the same port ----------------------------------


def test_redis_killed_and_restarted_on_the_same_port(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    with own_redis(tmp_path / "redis") as server:
        proxy = start_redis_proxy(start_proxy, server.url, "--secret", "s-sixteen-bytes!")
        stored = warm(proxy, "before the crash")
        server.kill()

        down = [ask(proxy, "before the crash") for _ in range(5)]
        for answer in down:
            assert (answer.status, answer.cache) == (200, "MISS")
            assert answer.took < SLOW_BOUND
            assert same_answer(answer.content, stored.content)
        assert sum(a.took for a in down) < SLOW_BOUND  # refused connections fail fast
        assert proxy.store_errors() == {"get": 5.0, "fingerprint": 5.0, "put": 5.0}
        assert_unready(proxy)

        server.start()  # same port, no data
        answers = recover(proxy, "before the crash")
        assert [a.cache for a in answers][-2:] == ["MISS", "HIT"]
        assert answers[-1].content == answers[-2].content
        assert same_answer(answers[-1].content, stored.content)
        key = answers[-1].headers["X-Repro-Key"]
        assert stored_bodies(server.port, key) == {FP: answers[-1].content}
        assert_ready(proxy)


# --- 3. Redis down when the proxy starts -----------------------------------------------------


def test_proxy_starts_and_serves_with_redis_down_then_uses_it_once_it_is_up(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    with own_redis(tmp_path / "redis", start=False) as server:
        proxy = start_redis_proxy(start_proxy, server.url)  # no --secret: the store holds none
        assert http().get(proxy.url + "/healthz").status_code == 200
        assert_unready(proxy)
        down = [ask(proxy, "served without a store") for _ in range(3)]
        for answer in down:
            assert (answer.status, answer.cache) == (200, "MISS")
            assert answer.took < SLOW_BOUND
        assert same_answer(down[0].content, down[2].content)
        assert len(sim.llm_requests()) == 3
        assert proxy.store_errors() == {"get": 3.0, "fingerprint": 3.0, "put": 3.0}

        server.start()
        answers = recover(proxy, "served without a store")
        assert [a.cache for a in answers][-2:] == ["MISS", "HIT"]
        assert answers[-1].content == answers[-2].content
        key = answers[-1].headers["X-Repro-Key"]
        assert stored_bodies(server.port, key) == {FP: answers[-1].content}
        assert_ready(proxy)
        assert len(sim.llm_requests()) == 3 + len(answers) - 1


def test_a_replica_started_while_redis_was_down_shares_the_store_secret_once_it_is_up(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """Contract: without --secret the HMAC secret is the one kept in the store, and processes
    sharing a store must agree on it. A replica booted during an outage must join the shared
    cache once the store answers, not keep a private secret (and a private cache) until it is
    restarted."""
    with own_redis(tmp_path / "redis", start=False) as server:
        early = start_redis_proxy(start_proxy, server.url)
        assert_unready(early)
        server.start()
        wait_until(lambda: readyz(early)[0] == 200, "the early replica ready", RECOVERY_BOUND)
        stored = ask(early, "shared across replicas")
        assert (stored.status, stored.cache) == (200, "MISS")
        late = start_redis_proxy(start_proxy, server.url)
        served = ask(late, "shared across replicas")
        assert served.headers["X-Repro-Key"] == stored.headers["X-Repro-Key"]
        assert (served.status, served.cache) == (200, "HIT")
        assert served.content == stored.content
        assert len(sim.llm_requests()) == 1


# --- 4. a slow, silent or cut network to Redis (tests/faultproxy.py) ------------------------


def test_network_faults_between_proxy_and_redis(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """One proxy through each fault in turn. Recovery by the breaker's own probe is covered
    above; here an answered /readyz ping closes the circuit, which keeps the test short."""
    with own_redis(tmp_path / "redis") as server, FaultProxy(server.port) as faults:
        url = f"redis://127.0.0.1:{faults.port}/0"
        proxy = start_redis_proxy(start_proxy, url, "--secret", "s-sixteen-bytes!")
        stored = warm(proxy, "over a bad network")
        key = stored.headers["X-Repro-Key"]
        fingerprint_errors = put_errors = 0.0

        for mode in ("delay", "blackhole", "cut"):
            faults.set_mode(mode, delay_ms=2000)
            answers = [ask(proxy, "over a bad network") for _ in range(6)]
            took = [round(a.took, 3) for a in answers]
            for answer in answers:
                assert (answer.status, answer.cache) == (200, "MISS"), mode
                assert same_answer(answer.content, stored.content)
            # A slow or silent store costs one deadline, then the circuit is open; a cut store
            # fails fast from the start.
            assert answers[0].took < (FAST_BOUND if mode == "cut" else SLOW_BOUND), (mode, took)
            assert all(t < FAST_BOUND for t in took[1:]), (mode, took)
            fingerprint_errors, put_errors = fingerprint_errors + 6, put_errors + 6
            assert proxy.store_errors() == {
                "get": put_errors,
                "fingerprint": fingerprint_errors,
                "put": put_errors,
            }
            assert_unready(proxy)

            faults.set_mode("pass")
            wait_until(lambda: readyz(proxy)[0] == 200, f"ready after {mode}", RECOVERY_BOUND)
            healed = ask(proxy, "over a bad network")
            assert (healed.status, healed.cache) == (200, "HIT"), mode
            assert healed.content == stored.content
        assert stored_bodies(server.port, key) == {FP: stored.content}


# --- 5. a Redis Cluster that loses a master --------------------------------------------------


def _keys_on(port: int) -> set[str]:
    with redis.Redis(port=port) as client:
        return {name.decode() for name in client.scan_iter(count=1000)}


def test_cluster_losing_a_master_serves_nothing_wrong(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        nodes: tuple[RedisServer, ...] = tuple(
            stack.enter_context(running_redis(tmp_path / f"node{i}", *CLUSTER_OPTIONS, bus=True))
            for i in range(3)
        )
        _create_cluster(nodes)
        proxy = start_redis_proxy(start_proxy, nodes[0].url, "--secret", "s-sixteen-bytes!")
        prompts = [f"cluster question {i}" for i in range(20)]
        first: dict[str, Answer] = {}
        for prompt in prompts:
            first[prompt] = ask(proxy, prompt)
            assert (first[prompt].status, first[prompt].cache) == (200, "MISS")
        keys = {prompt: first[prompt].headers["X-Repro-Key"] for prompt in prompts}
        hits = [ask(proxy, prompt) for prompt in prompts]
        assert [h.cache for h in hits] == ["HIT"] * 20
        assert [h.content for h in hits] == [first[p].content for p in prompts]

        # Where each entry lives; the victim is a master holding entries but not the model's
        # fingerprint state, so that keys on the other masters can still be served.
        holders = {node.port: _keys_on(node.port) for node in nodes}
        owner = {}
        for prompt in prompts:
            places = [port for port, names in holders.items() if entry_name(keys[prompt]) in names]
            assert len(places) == 1, prompt
            owner[prompt] = places[0]
            assert stored_bodies(places[0], keys[prompt]) == {FP: first[prompt].content}
        candidates = [
            node
            for node in nodes
            if node.port in owner.values()
            and not any(name.startswith("repro:fp:") for name in holders[node.port])
        ]
        assert candidates, "no master holds entries without the fingerprint state"
        victim = candidates[0]
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(lambda: not _listening(victim.port), "the killed master going away", 5)
        lost = {p for p in prompts if owner[p] == victim.port}
        assert 0 < len(lost) < 20
        sim_calls = len(sim.llm_requests())

        # Keys on the dead master can only MISS. Keys elsewhere HIT unless repeated failures
        # opened the store's circuit for a while (one breaker for the whole cluster): then they
        # MISS too. Either way every answer is right and every MISS is one upstream call.
        misses = 0
        for round_ in range(2):
            after = {prompt: ask(proxy, prompt) for prompt in prompts}
            for prompt, answer in after.items():
                assert answer.status == 200, (round_, prompt, answer.content)
                assert answer.took < SLOW_BOUND
                if answer.cache == "HIT":
                    assert prompt not in lost
                    assert answer.content == first[prompt].content
                else:
                    assert answer.cache == "MISS"
                    assert same_answer(answer.content, first[prompt].content)
            outcomes = {p: a.cache for p, a in after.items()}
            assert lost <= {p for p, c in outcomes.items() if c == "MISS"}, (round_, outcomes)
            misses += sum(c == "MISS" for c in outcomes.values())
        assert len(sim.llm_requests()) == sim_calls + misses


# --- 6. upstream faults ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream_proxy(sim_process: Sim) -> Iterator[Proxy]:
    """One memory-store proxy for the upstream-fault tests (each asks its own questions), with
    a 1 s upstream timeout; the `sim` fixture still resets the sim's faults for each test."""
    with running_proxy(sim_process.v1, "--upstream-timeout", "1") as proxy:
        yield proxy


def assert_error(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, answer.content
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code


def assert_not_stored(proxy: Proxy, prompt: str) -> None:
    cached = ask(proxy, prompt, {"Cache-Control": "only-if-cached"})
    assert_error(cached, 504, "cache_miss")


def assert_failed_once_unstored(
    proxy: Proxy, sim: Sim, kind: str, prompt: str, status: int, code: str
) -> Answer:
    """The upstream's one fault of `kind` is the client's error `code`, after exactly one
    upstream call, and nothing was stored."""
    sim.fault(kind=kind, count=1)
    answer = ask(proxy, prompt)
    assert_error(answer, status, code)
    assert len(sim.llm_requests()) == 1
    assert_not_stored(proxy, prompt)
    assert len(sim.llm_requests()) == 1
    return answer


def test_hanging_upstream_is_a_504_within_the_upstream_timeout(
    upstream_proxy: Proxy, sim: Sim
) -> None:
    proxy = upstream_proxy
    answer = assert_failed_once_unstored(proxy, sim, "hang", "hang", 504, "upstream_timeout")
    assert 0.9 <= answer.took < 1 + 1.5
    fine = ask(proxy, "hang")
    assert (fine.status, fine.cache) == (200, "MISS")
    assert len(sim.llm_requests()) == 2


def test_dropped_connection_is_a_502_and_not_retried(upstream_proxy: Proxy, sim: Sim) -> None:
    proxy = upstream_proxy
    assert_failed_once_unstored(proxy, sim, "drop", "drop", 502, "upstream_unreachable")
    fine = ask(proxy, "drop")
    assert (fine.status, fine.cache) == (200, "MISS")
    assert len(sim.llm_requests()) == 2


def test_truncated_body_is_a_502_and_never_stored(upstream_proxy: Proxy, sim: Sim) -> None:
    proxy = upstream_proxy
    assert_failed_once_unstored(proxy, sim, "cut", "cut me", 502, "upstream_unreachable")
    fine = [ask(proxy, "cut me") for _ in range(2)]
    assert [a.cache for a in fine] == ["MISS", "HIT"]
    assert fine[1].content == fine[0].content
    orjson.loads(fine[1].content)
    assert len(sim.llm_requests()) == 2


def test_cut_stream_breaks_for_the_client_and_is_never_stored(
    upstream_proxy: Proxy, sim: Sim
) -> None:
    proxy = upstream_proxy
    sim.fault(kind="cut", count=1, after=2)
    streamed = body("cut stream", stream=True)
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http().stream(
            "POST", proxy.v1 + "/chat/completions", content=streamed, headers=HEADERS
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["X-Repro-Cache"] == "MISS"
        for chunk in response.iter_raw():
            received += chunk
    assert received.count(b"data: ") == 2
    assert b"[DONE]" not in received
    assert len(sim.llm_requests()) == 1
    cached = http().post(
        proxy.v1 + "/chat/completions",
        content=streamed,
        headers={**HEADERS, "Cache-Control": "only-if-cached"},
    )
    assert cached.status_code == 504
    assert cached.json()["error"]["code"] == "cache_miss"
    assert len(sim.llm_requests()) == 1


RETRY_HEADERS = {"retry-after": "3", "retry-after-ms": "3000", "x-should-retry": "true"}


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_upstream_error_statuses_pass_through_unstored_and_unretried(
    upstream_proxy: Proxy, sim: Sim, status: int
) -> None:
    proxy = upstream_proxy
    errors_before = proxy.metric("repro_requests_total", route=ROUTE, cache="error")
    error = {"error": {"message": f"simulated {status}", "type": "t", "param": None, "code": "c"}}
    sim.fault(kind="status", status=status, count=1, headers=RETRY_HEADERS, body=error)
    answer = ask(proxy, f"status {status}")
    assert answer.status == status
    assert answer.content == orjson.dumps(error)
    for name, value in RETRY_HEADERS.items():
        assert answer.headers[name] == value
    assert len(sim.llm_requests()) == 1
    assert_not_stored(proxy, f"status {status}")
    fine = ask(proxy, f"status {status}")
    assert (fine.status, fine.cache) == (200, "MISS")
    assert len(sim.llm_requests()) == 2
    errors = proxy.metric("repro_requests_total", route=ROUTE, cache="error") - errors_before
    assert errors == 2  # the upstream's error and the only-if-cached 504
