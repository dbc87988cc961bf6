"""Serving with several processes on one port, and the one loop that runs a proxy process.

Each worker binds the port with SO_REUSEPORT, so the kernel spreads connections across them.
They share the cache, fingerprint state and fill locks through the store (hence a shared store
is required), and their metrics through prometheus-client's multiprocess directory, which the
supervisor creates empty and removes at exit. The supervisor stops every worker when it is told
to stop or when one of them dies, so an orchestrator sees one process that lives or fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from multiprocessing.process import BaseProcess
from multiprocessing.queues import SimpleQueue
from types import FrameType
from typing import Any

import uvloop

from proxy import logs
from proxy.config import Settings
from proxy.server import serving
from proxy.server.app import create_app
from proxy.store.base import StoreUnusable
from proxy.store.cassette import CassetteError

log = logging.getLogger("proxy.workers")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
START_FAILED = 2
"""The exit status of a start refused for a setting, as for any other setting refused."""
STARTING = (CassetteError, StoreUnusable, OSError)
"""What a process that cannot serve with its settings raises: each is one line naming one."""
STOP_MARGIN = 10.0
"""Seconds a worker has beyond --shutdown-timeout to close (its store, the cassette) before it
is killed."""
# Allocations between two young collections of the cyclic GC (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000
PR_SET_PDEATHSIG = 1  # prctl(2)


def run(
    settings: Settings,
    *,
    reuse_port: bool = False,
    multiprocess_dir: str | None = None,
    supervisor: int | None = None,
) -> None:
    """Serve in this process until SIGINT, SIGTERM or SIGHUP (a terminal or an ssh session
    that closed: killed at once by default, it lost every request in flight and the cassette
    of `--cassette`); a worker is given its supervisor's metrics directory, never one found in
    the environment, and stops when the supervisor dies."""
    signals: tuple[signal.Signals, ...] = serving.STOPPING
    if supervisor is not None:
        die_with(supervisor)
        # Ctrl-C or a hang-up in a terminal signals the whole group: a worker waits for the
        # supervisor's SIGTERM, so that one stop is one signal, not two (a second cuts the drain).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signals = (signal.SIGTERM,)
    logs.configure(settings.log_level)
    tune_collector()
    app = create_app(settings, multiprocess_dir=multiprocess_dir)
    with event_loop() as runner:
        runner.run(serving.serve(app, settings, reuse_port=reuse_port, signals=signals))


def event_loop() -> asyncio.Runner:
    """uvloop's loop, asked for by this runner only: `uvloop.install()`, which sets it for the
    whole process through the event loop policy, is deprecated from Python 3.12 (the policies
    themselves from 3.14)."""
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def start_failure(settings: Settings, exc: BaseException) -> str:
    """The line naming the setting a process could not start with."""
    if isinstance(exc, CassetteError):
        return f"--cassette: {exc}"
    if isinstance(exc, StoreUnusable):
        return f"--store: {exc}"
    assert isinstance(exc, OSError)
    return cannot_listen(settings.host, settings.port, exc)


def cannot_listen(host: str, port: int, exc: OSError) -> str:
    """A port in use (or a host not ours) is one line naming the setting, not a traceback."""
    # A name that does not resolve is a getaddrinfo error, whose negative errno os.strerror
    # does not know ("unknown error -2"); its own text says it.
    reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)
    return f"--host / --port: cannot listen on {host}:{port}: {reason.lower()}"


def _worker(settings: Settings, failures: SimpleQueue[str], **kwargs: Any) -> None:
    """One worker: a failure to start goes to the supervisor as its line, not a traceback."""
    try:
        run(settings, **kwargs)
    except STARTING as exc:
        failures.put(start_failure(settings, exc))
        sys.exit(START_FAILED)


def die_with(supervisor: int) -> None:
    """Have the kernel send SIGTERM when the supervisor dies, however it dies (SIGKILL, OOM):
    else the workers would go on serving the port with no one to stop them, nor anyone left to
    remove the metrics directory they write to. Linux only (prctl)."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the request above was made
        os.kill(os.getpid(), signal.SIGTERM)


def tune_collector() -> None:
    """Collect young objects less often. Under load a proxy keeps thousands of objects alive in
    flight (parsed bodies, headers, futures), and every young collection walks them all and
    promotes them to be walked again by the older ones: at CPython's default that is a visible
    share of a miss's CPU (bench/bench.py shows it). Objects in garbage cycles now wait for at
    most GC_YOUNG_THRESHOLD allocations; the older generations keep their default ratios."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def inherited_directory() -> str | None:
    """A multiprocess directory set before `serve` started. prometheus-client reads and writes
    its files whoever made them: one that another local user can write would let them plant
    figures in the proxy's metrics. The supervisor's own is made private (0700, a fresh name)."""
    return os.environ.get(MULTIPROC_ENV) or None


def supervise(settings: Settings) -> int:
    """Run `settings.workers` serving processes; return when they stop."""
    directory = tempfile.mkdtemp(prefix="repro-metrics-")
    os.environ[MULTIPROC_ENV] = directory  # read by prometheus-client as each worker imports it
    context = multiprocessing.get_context("spawn")
    kwargs = {"reuse_port": True, "multiprocess_dir": directory, "supervisor": os.getpid()}
    failures: SimpleQueue[str] = context.SimpleQueue()
    workers = [
        context.Process(target=_worker, args=(settings, failures), kwargs=kwargs, daemon=False)
        for _ in range(settings.workers)
    ]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        """The first signal stops the workers once this loop sees it; a second is passed on
        at once, cutting their drain short."""
        nonlocal stopping
        if stopping:
            _terminate(workers)
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in serving.STOPPING}
    try:
        with sigint_ignored_by_children():
            for worker in workers:
                worker.start()
        log.info("workers started", extra={"workers": [w.pid for w in workers]})
        while not stopping and all(worker.is_alive() for worker in workers):
            time.sleep(0.2)
        failed = not stopping
        refused = None if stopping or failures.empty() else failures.get()
        if refused is None and failed:
            log.error("a worker died: stopping the others")
        _stop(workers, settings.shutdown_timeout + STOP_MARGIN)
        if refused is not None:
            print(f"repro-proxy: {refused}", file=sys.stderr)
            return START_FAILED
        return 1 if failed else 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def sigint_ignored_by_children() -> Iterator[None]:
    """Spawn workers that ignore SIGINT from their first instruction: `run` ignores it too late
    for a Ctrl-C pressed while a worker still imports, which ended it with a KeyboardInterrupt
    traceback. An ignored disposition survives exec; the supervisor blocks SIGINT meanwhile, and
    Linux keeps a blocked signal pending even while it is ignored, so its own Ctrl-C is not
    lost but handled once the workers are spawned."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _terminate(workers: Sequence[BaseProcess]) -> None:
    """SIGTERM to each worker alive (the pid of one reaped may be another process's now)."""
    for worker in workers:
        if worker.is_alive() and worker.pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it exited since
                os.kill(worker.pid, signal.SIGTERM)


def _stop(workers: Sequence[BaseProcess], grace: float) -> None:
    """Each worker drains its requests (see proxy.server.drain) and exits; one still alive after
    `grace` seconds is killed."""
    _terminate(workers)
    deadline = time.monotonic() + grace
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            worker.kill()
            worker.join()
