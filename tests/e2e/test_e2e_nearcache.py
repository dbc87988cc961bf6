"""The near-cache in front of Redis: HITs from memory, kept coherent across replicas by pub/sub."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from bench.procs import settled
from tests.fixtures_procs import Proxy, ProxyFactory, Sim, run_cli
from tests.fixtures_redis import running_redis

ADMIN = {"Authorization": "Bearer t"}


def ask(proxy: Proxy, content: str, **headers: str) -> httpx.Response:
    return proxy.chat(content, model="m", key="sk-alice", headers=headers)


def replicas(
    start_proxy: ProxyFactory, url: str, *flags: str, writer: tuple[str, ...] = ()
) -> tuple[Proxy, Proxy]:
    """Two replicas; the first also with the `writer` flags."""
    made = [start_proxy("--store", url, "--admin-token", "t", *flags, *w) for w in (writer, ())]
    return made[0], made[1]


WRITERS = pytest.mark.parametrize(
    "writer", [(), ("--near-cache", "0")], ids=["writer-near-cache", "writer-without"]
)
"""A replica without a near-cache of its own announced nothing: the others served what they
held before its refreshes, purges and rotations, for as long as they held it."""


def answered_on_both(
    start_proxy: ProxyFactory, url: str, writer: tuple[str, ...] = ()
) -> tuple[Proxy, Proxy]:
    """Two replicas, "q" asked on the first and a HIT on the second."""
    a, b = replicas(start_proxy, url, writer=writer)
    ask(a, "q")
    assert ask(b, "q").headers["X-Repro-Cache"] == "HIT"
    return a, b


def cached(proxy: Proxy, prompt: str) -> bool:
    return ask(proxy, prompt, **{"Cache-Control": "only-if-cached"}).status_code != 504


def test_hits_come_from_memory_while_redis_is_frozen(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    with running_redis(tmp_path / "redis") as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        proxy = start_proxy("--store", url)
        stored = ask(proxy, "q")
        assert ask(proxy, "q").content == stored.content  # fetched once, now remembered
        errors = proxy.store_errors()
        os.kill(server.pid, signal.SIGSTOP)
        try:
            frozen = [ask(proxy, "q") for _ in range(5)]
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert [r.headers["X-Repro-Cache"] for r in frozen] == ["HIT"] * 5
        assert all(r.content == stored.content for r in frozen)
        assert proxy.store_errors() == errors  # no read went to Redis and timed out


def test_misses_with_the_current_fingerprint_leave_the_others_memory_alone(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """Every miss observes its answer's fingerprint; only a rotation may cost other replicas
    their remembered model state, else a busy replica would send every other one's HITs to
    Redis."""
    with running_redis(tmp_path / "redis") as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        a, b = replicas(start_proxy, url)
        ask(a, "q")
        assert ask(b, "q").headers["X-Repro-Cache"] == "HIT"  # b now remembers q and m's state
        for n in range(3):
            assert ask(a, f"other {n}").headers["X-Repro-Cache"] == "MISS"
        time.sleep(0.3)  # any announcement has reached b by now
        os.kill(server.pid, signal.SIGSTOP)
        try:
            frozen = ask(b, "q")
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert frozen.headers["X-Repro-Cache"] == "HIT"


@WRITERS
def test_a_purge_on_one_replica_reaches_the_others(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, writer: tuple[str, ...]
) -> None:
    a, b = answered_on_both(start_proxy, redis_url, writer)
    assert ask(b, "q").headers["X-Repro-Cache"] == "HIT"
    purged = httpx.post(a.url + "/admin/purge", json={"all": True}, headers=ADMIN, timeout=10)
    assert purged.json()["deleted"] == 1
    assert settled(lambda: not cached(b, "q"), within=5)


@WRITERS
def test_a_rotation_learned_by_one_replica_reaches_the_others(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, writer: tuple[str, ...]
) -> None:
    a, b = answered_on_both(start_proxy, redis_url, writer)
    sim.set_fingerprint("fp_sim_0002")
    assert ask(a, "another question").headers["X-Repro-Fingerprint"] == "fp_sim_0002"
    assert settled(lambda: not cached(b, "q"), within=5)


@WRITERS
def test_a_refresh_on_one_replica_replaces_the_others_copy(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, writer: tuple[str, ...]
) -> None:
    a, b = replicas(start_proxy, redis_url, writer=writer)
    first = ask(a, "q")
    assert ask(b, "q").content == first.content
    refreshed = ask(a, "q", **{"Cache-Control": "no-cache"})
    assert refreshed.content != first.content  # a new id, same seeded text
    assert settled(lambda: ask(b, "q").content == refreshed.content, within=5)


def test_near_cache_off(start_proxy: ProxyFactory, sim: Sim, tmp_path: Path) -> None:
    with running_redis(tmp_path / "redis") as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        proxy = start_proxy("--store", url, "--near-cache", "0")
        ask(proxy, "q")
        assert ask(proxy, "q").headers["X-Repro-Cache"] == "HIT"
        os.kill(server.pid, signal.SIGSTOP)
        try:
            frozen = ask(proxy, "q")
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert frozen.headers["X-Repro-Cache"] == "MISS"  # the store was asked and timed out


def monitored(port: int, act: Callable[[], object]) -> list[str]:
    """The commands Redis received from clients (not from scripts) while `act` ran."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"MONITOR\r\n")
        assert sock.recv(64).startswith(b"+OK")
        act()
        time.sleep(0.3)  # what the proxy sent has reached Redis and MONITOR
        sock.settimeout(0.3)
        data = b""
        for _ in range(1000):  # bounded: until Redis has nothing more to say
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
    lines = data.decode(errors="replace").splitlines()
    return [line for line in lines if " lua] " not in line]


def test_a_miss_of_a_known_model_reads_only_its_entry(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """The near-cache holds the model's fingerprint state (kept coherent by announcements), so
    a miss asks Redis for the entry alone: one command on the way in, not two."""
    with running_redis(tmp_path / "redis") as server:
        proxy = start_proxy("--store", f"redis://127.0.0.1:{server.port}/0")
        assert ask(proxy, "first").headers["X-Repro-Cache"] == "MISS"
        assert ask(proxy, "second").headers["X-Repro-Cache"] == "MISS"  # state now remembered

        def misses() -> None:
            for n in range(3):
                assert ask(proxy, f"fresh {n}").headers["X-Repro-Cache"] == "MISS"

        seen = monitored(server.port, misses)
        model_reads = [line for line in seen if '"HGETALL"' in line and ":fp:{" in line]
        entry_reads = [line for line in seen if '"HGETALL"' in line and ":e:{" in line]
        assert model_reads == []
        assert len(entry_reads) == 3  # one per miss
        assert ask(proxy, "fresh 0").headers["X-Repro-Cache"] == "HIT"


def test_an_import_into_the_store_reaches_the_near_caches(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, tmp_path: Path
) -> None:
    """`import --store` into a live store announced nothing: a replica went on serving what
    it held, while the others served the imported answer."""
    proxy = start_proxy("--store", redis_url, "--admin-token", "t", "--cache-scope", "shared")
    first = ask(proxy, "q")
    assert ask(proxy, "q").headers["X-Repro-Cache"] == "HIT"  # held in its near-cache now
    line = orjson.loads(httpx.get(proxy.url + "/admin/export", headers=ADMIN, timeout=5).content)
    said = orjson.loads(line["body"])
    said["choices"][0]["message"]["content"] = "imported over what was stored"
    line["body"] = orjson.dumps(said).decode()
    cassette = tmp_path / "edited.jsonl"
    cassette.write_bytes(orjson.dumps(line) + b"\n")
    imported = run_cli("import", "--store", redis_url, str(cassette))
    assert imported.returncode == 0, imported.stderr
    assert settled(lambda: "imported over" in ask(proxy, "q").text, within=5), first.text
