"""Real processes for end-to-end tests: `repro-proxy sim` as the upstream, `repro-proxy serve`.

Each is started with `python -m proxy` on a free loopback port, waited for (bounded), and
terminated after the test. The sim is shared by the session and reset before each test.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

import httpx
import pytest

from bench.procs import free_port, settled, stop, wait_until_up
from proxy.server.preflight import CHECK_AGENT

if TYPE_CHECKING:
    from openai import AzureOpenAI, OpenAI
    from prometheus_client.samples import Sample

LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")

# The proxy honours these for its upstream calls: the test machine's own must not route
# loopback traffic; a test that wants a forward proxy passes them in `extra`.
_PROXY_VARS = frozenset({"http_proxy", "https_proxy", "no_proxy", "all_proxy"})


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("REPRO_") and k.lower() not in _PROXY_VARS
    }
    env.update(extra or {})
    return env


@dataclass
class Served:
    """A process of ours listening on a loopback port."""

    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def v1(self) -> str:
        return self.url + "/v1"


@dataclass
class Sim(Served):
    """The simulated upstream, with its control routes."""

    def control(self, method: str, path: str, json: Any = None) -> Any:
        response = httpx.request(method, self.url + "/_sim/" + path, json=json, timeout=5)
        response.raise_for_status()
        return response.json() if response.content else None

    def set_fingerprint(self, fingerprint: str | None) -> None:
        self.control("POST", "fingerprint", {"fingerprint": fingerprint})

    def requests(self, start_up_checks: bool = False) -> list[dict[str, Any]]:
        """What the sim was asked; without the proxy's own look at it before serving (asked
        only of a base URL without /v1, as the sim's root is for Azure's paths) unless wanted."""
        asked = list(self.control("GET", "requests"))
        if start_up_checks:
            return asked
        return [r for r in asked if r["headers"].get("User-Agent") != CHECK_AGENT]

    def llm_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests() if r["method"] == "POST"]

    def fault(self, **spec: Any) -> None:
        self.control("POST", "faults", spec)

    def settings(self, **values: Any) -> None:
        self.control("POST", "settings", values)

    def accept_keys(self, *keys: str) -> None:
        """Only these keys are accepted from now on; none given: any non-empty key."""
        self.control("POST", "keys", {"api_keys": list(keys)})

    def stats(self) -> dict[str, Any]:
        return dict(self.control("GET", "stats"))

    def reset(self) -> None:
        self.control("DELETE", "requests")
        self.control("DELETE", "faults")
        self.set_fingerprint("fp_sim_0001")
        self.settings(latency=0.0, chunk_delay=0.0, divergence=0.0, drift=1.0)
        self.accept_keys()
        self.control("POST", "access_programs", {"access_programs": None})


@dataclass
class Proxy(Served):
    flags: tuple[str, ...] = field(default_factory=tuple)

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=5).text

    def samples(self) -> Iterator[Sample]:
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.metrics()):
            yield from family.samples

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample, 0 when it does not exist yet."""
        for sample in self.samples():
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
        return 0.0

    def chat(
        self,
        content: str,
        *,
        model: str = "gpt-4o-mini",
        key: str = "sk-tenant",
        headers: Mapping[str, str] | None = None,
        timeout: float = 10,
    ) -> httpx.Response:
        """One chat question as raw HTTP, so that the test reads the proxy's own headers and
        statuses (the SDK would retry an error and hide both)."""
        body = {"model": model, "messages": [{"role": "user", "content": content}]}
        return self.post("/chat/completions", body, key=key, headers=headers, timeout=timeout)

    def post(
        self,
        path: str,
        body: Mapping[str, object],
        *,
        key: str = "sk-tenant",
        headers: Mapping[str, str] | None = None,
        timeout: float = 10,
    ) -> httpx.Response:
        """A JSON body to `/v1` + `path` as raw HTTP, as `chat` sends one."""
        return httpx.post(
            self.v1 + path,
            json=body,
            headers={"Authorization": f"Bearer {key}", **(headers or {})},
            timeout=timeout,
        )

    def sdk(self, key: str = "sk-tenant") -> OpenAI:
        """The official SDK against the proxy, without retries, closed after the test."""
        from openai import OpenAI

        return closed_after_test(OpenAI(base_url=self.v1, api_key=key, max_retries=0))

    def metric_reaching(
        self, name: str, at_least: float, within: float = 10.0, **labels: str
    ) -> float:
        """The sample once it reaches `at_least`, else its value after `within` seconds: what
        the proxy counts after it has answered (drift checks, probes) lands a little later."""
        return settled(lambda: self.metric(name, **labels), lambda v: v >= at_least, within)

    def store_errors(self) -> dict[str, float]:
        """The store errors counted so far, by the operation that failed."""
        return {
            sample.labels["op"]: sample.value
            for sample in self.samples()
            if sample.name == "repro_store_errors_total"
        }


@contextmanager
def running_sim() -> Iterator[Sim]:
    """A `repro-proxy sim` on a free port, up; stopped on exit."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "sim", "--port", str(port)],
        env=_clean_env(),
    )
    sim = Sim(port, proc)
    try:
        wait_until_up(sim.url + "/_sim/fingerprint", proc)
        yield sim
    finally:
        stop(proc)


def launch_proxy(
    upstream: str,
    *flags: str,
    env: dict[str, str] | None = None,
    stderr: IO[bytes] | int | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Proxy:
    """`repro-proxy serve` on a free port against `upstream`, not yet waited for: several
    launched together pay one start-up."""
    port = free_port()
    argv = [sys.executable, "-m", "proxy", "serve", "--port", str(port), "--upstream", upstream]
    proc = subprocess.Popen(
        [*argv, *flags], env=_clean_env(env), stderr=stderr, preexec_fn=preexec_fn
    )
    return Proxy(port, proc, flags)


def wait_up(proxy: Proxy) -> Proxy:
    wait_until_up(proxy.url + "/healthz", proxy.proc)
    return proxy


@contextmanager
def running_proxies(
    upstream: str, configs: Mapping[str, tuple[str, ...]]
) -> Iterator[dict[str, Proxy]]:
    """One proxy per named set of flags, launched side by side; all stopped on exit."""
    started: dict[str, Proxy] = {}
    try:
        for name, flags in configs.items():
            started[name] = launch_proxy(upstream, *flags)
        for proxy in started.values():
            wait_up(proxy)
        yield started
    finally:
        for proxy in started.values():
            stop(proxy.proc)


@contextmanager
def running_proxy(
    upstream: str,
    *flags: str,
    stderr: IO[bytes] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[Proxy]:
    """One proxy, up; stopped on exit."""
    proxy = launch_proxy(upstream, *flags, stderr=stderr, preexec_fn=preexec_fn)
    try:
        yield wait_up(proxy)
    finally:
        stop(proxy.proc)


class _Closable(Protocol):
    def close(self) -> None: ...


_C = TypeVar("_C", bound=_Closable)
_OPEN_CLIENTS: list[_Closable] = []


def closed_after_test(client: _C) -> _C:
    """`client`, closed with its connections when the test ends, even when it failed (the
    `close_clients` fixture of tests/e2e does it)."""
    _OPEN_CLIENTS.append(client)
    return client


AZURE_VERSION = "2024-10-21"


def azure_client(
    proxy: Proxy, ns: str, key: str = "az-key", version: str = AZURE_VERSION
) -> AzureOpenAI:
    """The SDK's Azure client, against the proxy, in namespace `ns`, closed after the test."""
    from openai import AzureOpenAI

    made = AzureOpenAI(
        azure_endpoint=proxy.url,
        api_version=version,
        api_key=key,
        max_retries=0,
        default_headers={"X-Repro-Namespace": ns},
    )
    return closed_after_test(made)


def close_open_clients() -> None:
    while _OPEN_CLIENTS:
        _OPEN_CLIENTS.pop().close()


@pytest.fixture(scope="session")
def sim_process() -> Iterator[Sim]:
    with running_sim() as sim:
        yield sim


@pytest.fixture
def sim(sim_process: Sim) -> Sim:
    sim_process.reset()
    return sim_process


ProxyFactory = Callable[..., Proxy]


@pytest.fixture
def start_proxy(sim: Sim) -> Iterator[ProxyFactory]:
    """Start `repro-proxy serve` against the sim; flags as strings, env as a dict."""
    started: list[Proxy] = []

    def start(
        *flags: str,
        env: dict[str, str] | None = None,
        upstream: str | None = None,
        stderr: IO[bytes] | None = None,
    ) -> Proxy:
        proxy = launch_proxy(upstream or sim.v1, *flags, env=env, stderr=stderr)
        started.append(proxy)
        return wait_up(proxy)

    try:
        yield start
    finally:
        for proxy in started:
            stop(proxy.proc)


@pytest.fixture
def proxy(start_proxy: ProxyFactory) -> Proxy:
    """A proxy with default settings and the memory store."""
    return start_proxy()


def stopped(proxy: Proxy) -> None:
    """Stop `proxy` as an operator does (SIGTERM), and see it exit cleanly: a recording proxy
    has written its cassette then."""
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(timeout=15) == 0


def replaying(start_proxy: ProxyFactory, recorder: Proxy, tape: Path, *flags: str) -> Proxy:
    """Stop `recorder`, which writes its cassette `tape` as it stops, and start a proxy that
    replays `tape` offline: its upstream a port nothing listens on."""
    stopped(recorder)
    offline = "http://127.0.0.1:9/v1"
    return start_proxy(*flags, "--cassette", str(tape), "--cache-mode", "replay", upstream=offline)


def run_cli(
    *args: str, admin_token: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`repro-proxy ARGS` as an operator's shell runs it: a bare PATH and nothing else from the
    test machine but `env`, the admin token (when given) in REPRO_ADMIN_TOKEN."""
    env = {"PATH": "/usr/bin:/bin", **(env or {})}
    if admin_token is not None:
        env["REPRO_ADMIN_TOKEN"] = admin_token
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def run_command(argv: list[str], **env: str) -> tuple[int, str]:
    """`repro-proxy ARGV` with this machine's environment but its REPRO_* settings (and with
    `env`): its exit status and standard error."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REPRO_")} | env
    done = subprocess.run(
        [sys.executable, "-m", "proxy", *argv],
        capture_output=True,
        env=environ,
        stdin=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )
    return done.returncode, done.stderr.decode(errors="replace")


def started(argv: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A process started with --port 0, and the URL it says it listens on."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, env=_clean_env(), stderr=sink)
    found = settled(
        lambda: LISTENING.search(log.read_text()),
        lambda line: line is not None or proc.poll() is not None,
        within=15,
    )
    if found:
        return proc, found.group(1)
    stop(proc)
    raise AssertionError(f"no listening line: {log.read_text()}")


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets `pid` holds open (to find its connections in /proc/PID/net/tcp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


CHUNKED_END = b"\r\n0\r\n\r\n"  # the last chunk of a chunked body, that ends it


def raw_exchange(port: int, request: bytes, *, until: bytes = b"") -> bytes:
    """The bytes the proxy sends back to `request`, written as is on a connection of its own
    (for what a client library would refuse to send, or would tidy first), exactly as framed:
    read until the proxy closes the connection or, on one it keeps alive, until what came ends
    with `until`. Bounded: a TimeoutError once 10 s have passed in all."""
    deadline = time.monotonic() + 10
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        while not (until and received.endswith(until)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no end within 10 s: {bytes(received[:300])!r}")
            sock.settimeout(left)
            if not (chunk := sock.recv(65536)):
                break
            received += chunk
    return bytes(received)


def raw_answer(port: int, request: bytes) -> tuple[int, bytes, bytes]:
    """Status, head and body of the proxy's answer to `request` (see raw_exchange), read to the
    connection's close."""
    head, _, body = raw_exchange(port, request).partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head, body
