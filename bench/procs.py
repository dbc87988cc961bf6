"""Processes on loopback for the tests and the benchmarks: a free port, waiting (bounded) until
a process answers or a reading settles, what a process has used (CPU, peak memory), and stopping
it. One copy, imported by bench scripts (`import procs`) and by the tests (`from bench.procs
import …`)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx

START_TIMEOUT = 15.0
ROOT = Path(__file__).resolve().parents[1]
STOP_GRACE = 5.0
T = TypeVar("T")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_range()
_given: set[int] = set()
_pick = random.Random()


def _candidates(room: int) -> Iterator[int]:
    """Ports outside the kernel's ephemeral range with `room` more above each, in a random
    order that differs between test processes."""
    low, high = _EPHEMERAL
    span = range(10000, low - room) if low - room > 11000 else range(high + 1, 65535 - room)
    for _ in range(500):
        yield _pick.choice(span)


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(bus: bool = False) -> int:
    """A port free now, for a process started next. Not one from the kernel's ephemeral range:
    a port bound with 0 and closed is soon any outbound connection's source port (a client of
    another server in the same run), and the process then fails with 'address in use'. Never the
    same port twice from one process. With `bus`, the Redis cluster bus port 10000 above it is
    free too (and outside the range as well)."""
    room = 10000 if bus else 0
    for port in _candidates(room):
        wanted = (port, port + room) if bus else (port,)
        if not any(p in _given or not _is_free(p) for p in wanted):
            _given.update(wanted)
            return port
    raise RuntimeError("no free port outside the ephemeral range")


def settled(
    read: Callable[[], T],
    done: Callable[[T], object] = bool,
    within: float = 10.0,
    pause: float = 0.05,
) -> T:
    """`read()` again until `done` holds of its value, at most `within` seconds; the last value
    read, so that the caller's assertion shows what was there rather than a timeout."""
    deadline = time.monotonic() + within
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(pause)
        value = read()
    return value


def wait_until(ready: Callable[[], bool], what: str, timeout: float, pause: float = 0.05) -> None:
    """Poll `ready` until it holds, at most `timeout` seconds; then fail naming `what`."""
    if not settled(ready, within=timeout, pause=pause):
        raise AssertionError(f"timed out waiting for {what}")


def wait_until_up(
    url: str, proc: subprocess.Popen[bytes], timeout: float = START_TIMEOUT, log: str = ""
) -> None:
    """Until `url` answers HTTP at all; a process that exits first fails at once (with `log`,
    the tail of its output, when the caller has one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {url}\n{log}")
        try:
            httpx.get(url, timeout=0.5, trust_env=False)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up within {timeout:g} s")


def wait_redis_up(port: int, proc: subprocess.Popen[bytes], timeout: float = START_TIMEOUT) -> None:
    """Until the redis-server on `port` answers PING; one that exits first fails at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode} before answering")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock,
        ):
            sock.sendall(b"PING\r\n")
            if sock.recv(64).startswith(b"+PONG"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server on {port} did not answer PING within {timeout:g} s")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int) -> int:
    """The most resident memory a process has held so far (VmHWM)."""
    return _status_kib(pid, "VmHWM:")


def rss_kib(pid: int) -> int:
    """The resident memory a process holds now (VmRSS)."""
    return _status_kib(pid, "VmRSS:")


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise AssertionError(f"no {field}")


def stop(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; a stopped (SIGSTOP) process is woken first."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


@contextlib.contextmanager
def process(args: list[str], ready_url: str) -> Iterator[None]:
    """Run `python -m proxy ARGS` until the block ends; wait (bounded) until it answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_up(ready_url, proc)
        yield
    finally:
        stop(proc)
