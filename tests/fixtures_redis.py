"""Real Redis servers for the tests: one standalone server and one three-node cluster per session.

Redis is never mocked: the store's atomicity and key layout only mean something against a real
server. A missing `redis-server` fails the run instead of skipping it, so CI cannot go green
without having tested Redis.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bench.procs import free_port, wait_until
from proxy.store.batch import Batcher

_START_TIMEOUT = 10.0
# One attempt per poll: redis-py's default retries a refused connection three times with a
# backoff of seconds, which made each start wait about a second past the moment Redis listened.
ONE_TRY = Retry(NoBackoff(), 0)


@dataclass(frozen=True)
class RedisServer:
    """One running redis-server on 127.0.0.1."""

    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flushall(self) -> None:
        with redis.Redis(port=self.port) as client:
            client.flushall()


@dataclass(frozen=True)
class RedisClusterNodes:
    """A running three-master cluster; `url` names one node, as a user would."""

    nodes: tuple[RedisServer, ...]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def flushall(self) -> None:
        for node in self.nodes:
            node.flushall()


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: install Redis (apt-get install redis-server)")
    return path


def _answers_ping(port: int, password: str | None = None) -> bool:
    try:
        with redis.Redis(
            port=port,
            password=password,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=ONE_TRY,
        ) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


@contextmanager
def running_redis(
    directory: Path, *options: str, bus: bool = False, password: str | None = None
) -> Iterator[RedisServer]:
    """Start a redis-server in `directory`, wait for PING (with `password`, when the options
    set one), and stop it on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port(bus)
    command = [_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no", "--dir", str(directory), *options]
    log = (directory / "redis.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: process.poll() is None and _answers_ping(port, password),
            f"redis on {port}",
            _START_TIMEOUT,
        )
        yield RedisServer(port=port, pid=process.pid)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _cluster_ok(nodes: tuple[RedisServer, ...]) -> bool:
    for node in nodes:
        with redis.Redis(port=node.port) as client:
            if client.cluster("info").get("cluster_state") != "ok":
                return False
    return True


def _create_cluster(nodes: tuple[RedisServer, ...]) -> None:
    addresses = [f"127.0.0.1:{node.port}" for node in nodes]
    command = [_binary("redis-cli"), "--cluster", "create", *addresses]
    command += ["--cluster-replicas", "0", "--cluster-yes"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.fail(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
    wait_until(lambda: _cluster_ok(nodes), "redis cluster", _START_TIMEOUT)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, emptied for this test."""
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
async def batched(redis_url: str) -> AsyncIterator[tuple[AsyncRedis, Batcher]]:
    """A redis-py client on the emptied session server and a Batcher over it, closed after."""
    client = AsyncRedis.from_url(redis_url)
    batcher = Batcher(client)
    yield client, batcher
    await batcher.close()
    await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    root = tmp_path_factory.mktemp("redis-cluster")
    options = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
    with ExitStack() as stack:
        nodes = tuple(
            stack.enter_context(running_redis(root / str(index), *options, bus=True))
            for index in range(3)
        )
        _create_cluster(nodes)
        yield RedisClusterNodes(nodes)


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterNodes) -> str:
    """The session cluster's URL, emptied for this test."""
    redis_cluster.flushall()
    return redis_cluster.url
