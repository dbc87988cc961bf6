"""Several worker processes on one port share the store and report one set of metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from bench.procs import wait_until
from tests.fixtures_procs import ProxyFactory, Sim

AUTH = {"Authorization": "Bearer sk-alice", "Content-Type": "application/json"}


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def serving_children(pid: int) -> list[int]:
    return [
        child
        for child in children(pid)
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def test_workers_share_the_port_the_cache_and_the_metrics(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str
) -> None:
    proxy = start_proxy("--workers", "2", "--store", redis_url)
    assert len(serving_children(proxy.proc.pid)) == 2
    outcomes = []
    for index in range(40):
        body = orjson.dumps(
            {"model": "m", "messages": [{"role": "user", "content": str(index % 10)}]}
        )
        with httpx.Client() as fresh:  # a new connection each time, so both workers serve
            response = fresh.post(proxy.v1 + "/chat/completions", content=body, headers=AUTH)
        assert response.status_code == 200
        outcomes.append(response.headers["X-Repro-Cache"])
    assert outcomes.count("MISS") == 10
    assert outcomes.count("HIT") == 30
    assert len(sim.llm_requests()) == 10
    route = "/v1/chat/completions"
    assert proxy.metric("repro_requests_total", route=route, cache="hit") == 30
    assert proxy.metric("repro_requests_total", route=route, cache="miss") == 10
    assert proxy.metric("repro_fingerprint_info", model="m", fingerprint="fp_sim_0001") == 1


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["term", "hang-up"])
def test_the_supervisor_stops_its_workers_and_cleans_up(
    start_proxy: ProxyFactory, redis_url: str, tmp_path: Path, stop: signal.Signals
) -> None:
    """A hang-up (the terminal or ssh session closed) killed the supervisor at once, and left
    its metrics directory behind."""
    proxy = start_proxy("--workers", "2", "--store", redis_url, env={"TMPDIR": str(tmp_path)})
    workers = serving_children(proxy.proc.pid)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("repro-metrics-")]
    proxy.proc.send_signal(stop)
    assert proxy.proc.wait(timeout=15) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert list(tmp_path.iterdir()) == []


def test_workers_refuse_the_memory_store() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--workers", "2"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert b"--workers" in result.stderr and b"shared store" in result.stderr


PLANT = """
from prometheus_client import Counter
Counter("repro_cache_hits_total", "planted", ["model"]).labels("planted").inc(12345)
"""


def planted(directory: Path) -> dict[str, bytes]:
    """A directory another local user could write, holding a figure they made up."""
    directory.mkdir(mode=0o777)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", PLANT], env=env, check=True, timeout=30)
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_one_process_refuses_an_inherited_metrics_directory(tmp_path: Path) -> None:
    """prometheus-client would read every file there into /metrics, and write its own."""
    shared = tmp_path / "shared"
    before = planted(shared)
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--port", "0"],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert b"PROMETHEUS_MULTIPROC_DIR is set" in result.stderr
    assert {p.name: p.read_bytes() for p in shared.iterdir()} == before


def test_workers_keep_their_metrics_in_a_private_directory(
    start_proxy: ProxyFactory, redis_url: str, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    before = planted(shared)
    proxy = start_proxy(
        "--workers",
        "2",
        "--store",
        redis_url,
        env={"PROMETHEUS_MULTIPROC_DIR": str(shared), "TMPDIR": str(tmp_path)},
    )
    assert "planted" not in proxy.metrics()
    assert {p.name: p.read_bytes() for p in shared.iterdir()} == before
    (own,) = [p for p in tmp_path.iterdir() if p.name.startswith("repro-metrics-")]
    assert own.stat().st_mode & 0o777 == 0o700


def test_workers_stop_when_the_supervisor_is_killed(
    start_proxy: ProxyFactory, redis_url: str, tmp_path: Path
) -> None:
    """SIGKILL (or the OOM killer) gives the supervisor no chance to stop its workers: the
    kernel must, or they go on serving the port with no one left to stop them."""
    proxy = start_proxy("--workers", "2", "--store", redis_url, env={"TMPDIR": str(tmp_path)})
    workers = serving_children(proxy.proc.pid)
    assert len(workers) == 2
    proxy.proc.kill()
    proxy.proc.wait(timeout=15)

    def gone() -> bool:
        for pid in workers:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                return False
        return True

    wait_until(gone, "the workers to stop", timeout=20)


def test_a_worker_that_dies_stops_the_rest_without_a_restart_loop(
    start_proxy: ProxyFactory, redis_url: str, tmp_path: Path
) -> None:
    """A request that killed a worker (or the OOM killer choosing one) is not retried by a
    supervisor restarting it forever: the whole proxy stops, failed, for its orchestrator to
    see, and leaves no metrics files behind for a later supervisor's workers to sum."""
    proxy = start_proxy("--workers", "2", "--store", redis_url, env={"TMPDIR": str(tmp_path)})
    first, second = serving_children(proxy.proc.pid)
    os.kill(first, signal.SIGKILL)
    assert proxy.proc.wait(timeout=30) == 1
    assert not Path(f"/proc/{second}").exists()  # stopped and reaped by the supervisor
    assert list(tmp_path.iterdir()) == []
