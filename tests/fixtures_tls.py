"""A redis-server that speaks TLS only, with a certificate authority made for the test run.

Managed Redis services take `rediss://` URLs and a CA of their own: the store must reach them
through redis-py's TLS connection and trust that CA, never a certificate that merely looks right.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from bench.procs import free_port, wait_until
from tests.egress_peers import Authority
from tests.fixtures_redis import _START_TIMEOUT, ONE_TRY, _binary


@dataclass(frozen=True)
class TlsRedis:
    """One running TLS-only redis-server on 127.0.0.1, and the CA that signed its certificate."""

    port: int
    ca: Path

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, ssl=True, ssl_ca_certs=str(self.ca))

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()


def _answers_ping(server: TlsRedis) -> bool:
    try:
        ca = str(server.ca)
        with redis.Redis(port=server.port, ssl=True, ssl_ca_certs=ca, retry=ONE_TRY) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


@contextmanager
def running_tls_redis(directory: Path) -> Iterator[TlsRedis]:
    """Start a redis-server with TLS on its only port, wait for PING, and stop it on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = Authority.create(directory, "redis-ca")
    identity = authority.issue(directory, "redis", server=True)
    server = TlsRedis(free_port(), authority.pem)
    command = [_binary("redis-server"), "--port", "0", "--tls-port", str(server.port)]
    command += ["--bind", "127.0.0.1", "--tls-auth-clients", "no"]
    command += ["--tls-cert-file", str(identity.cert), "--tls-key-file", str(identity.key)]
    command += ["--tls-ca-cert-file", str(authority.pem)]
    command += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    log = (directory / "redis.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        up = lambda: process.poll() is None and _answers_ping(server)  # noqa: E731
        wait_until(up, "TLS redis", _START_TIMEOUT)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def redis_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    with running_tls_redis(tmp_path_factory.mktemp("redis-tls")) as server:
        yield server
