"""A Redis user an operator limited with ACLs: a user without the scripts or the near-caches'
PUBLISH is refused when the proxy starts, naming what to grant, rather than failing every write
while the proxy serves on."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis

from proxy.store import open_store
from proxy.store.base import Labels, StoreRefused, Write
from proxy.store.redis import RedisStore
from tests.fixtures_procs import free_port
from tests.fixtures_redis import RedisServer, running_redis

USERS = {
    "everything": ("+@all",),
    "noscript": ("+@all", "-@scripting"),
    "nopublish": ("+@all", "-publish"),
    "nosubscribe": ("+@all", "-subscribe"),
}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("acl")) as server:
        with redis.Redis(port=server.port) as client:
            for name, rules in USERS.items():
                client.execute_command("ACL", "SETUSER", name, "on", ">pw", "~*", "&*", *rules)
        yield server


def url(server: RedisServer, user: str) -> str:
    return f"redis://{user}:pw@127.0.0.1:{server.port}/0"


@pytest.mark.parametrize(
    ("user", "channel", "subscribes", "denied"),
    [
        ("everything", "repro:invalidate", True, []),
        ("noscript", "", True, ["EVAL", "EVALSHA"]),
        ("nopublish", "repro:invalidate", True, ["PUBLISH"]),
        ("nopublish", "repro:invalidate", False, ["PUBLISH"]),  # a writer's news, still
        ("nopublish", "", True, []),  # a store that announces nothing
        ("nosubscribe", "repro:invalidate", True, ["SUBSCRIBE"]),
        ("nosubscribe", "repro:invalidate", False, []),  # no near-cache: nothing to hear
    ],
)
async def test_what_the_user_may_not_run_is_named(
    limited: RedisServer, user: str, channel: str, subscribes: bool, denied: list[str]
) -> None:
    store = await open_store(url(limited, user), channel, deadline=1.0)
    assert isinstance(store, RedisStore)
    try:
        assert await store.denied(subscribes) == denied
    finally:
        await store.close()


async def test_a_store_that_does_not_answer_denies_nothing() -> None:
    store = await open_store(f"redis://127.0.0.1:{free_port()}/0?cluster=false", deadline=1.0)
    assert isinstance(store, RedisStore)
    try:
        assert await store.denied() == []
    finally:
        await store.close()


@pytest.mark.slow  # starts `repro-proxy serve` (and its workers) per case
@pytest.mark.parametrize("workers", ["1", "2", "3"])
def test_serve_refuses_a_user_without_scripts_naming_what_to_grant(
    limited: RedisServer, workers: str
) -> None:
    """With several workers the supervisor says the line a worker could not start with, once,
    and exits as one process would: each worker's traceback and a plain 1 told nothing."""
    argv = [sys.executable, "-m", "proxy", "serve", "--port", str(free_port())]
    argv += ["--upstream", "http://127.0.0.1:9/v1", "--workers", workers, "--log-level", "error"]
    environ = {"PATH": "/usr/bin:/bin", "REPRO_STORE": url(limited, "noscript")}
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False, env=environ
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    line = "repro-proxy: --store: the Redis user may not run EVAL, EVALSHA"
    assert done.stderr.count(line) == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(line)
    assert ":pw@" not in done.stderr  # the password stays out of what is printed


async def test_a_refusal_inside_a_script_is_named_by_its_kind_not_its_first_word(
    limited: RedisServer,
) -> None:
    """A script's error reply has no code ("The user executing the script can't run..."):
    it reads as a ResponseError, and no word of the reply reaches the log."""
    store = await open_store(url(limited, "nopublish"), "repro:invalidate", deadline=1.0)
    try:
        with pytest.raises(StoreRefused) as refused:
            await store.put(Write("k", "fp_a", b"v", 60, Labels("", "m")))
        assert str(refused.value) == "redis put refused: ResponseError"
    finally:
        await store.close()


@pytest.mark.slow  # starts `repro-proxy serve` with two workers
def test_workers_that_cannot_bind_their_port_say_so_once(limited: RedisServer) -> None:
    port = free_port()
    with socket.socket() as holder:  # no SO_REUSEPORT: the workers cannot share it
        holder.bind(("127.0.0.1", port))
        holder.listen()
        argv = [sys.executable, "-m", "proxy", "serve", "--port", str(port), "--workers", "2"]
        argv += ["--upstream", "http://127.0.0.1:9/v1", "--log-level", "error"]
        environ = {"PATH": "/usr/bin:/bin", "REPRO_STORE": url(limited, "everything")}
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False, env=environ
        )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    line = (
        f"repro-proxy: --host / --port: cannot listen on 127.0.0.1:{port}: address already in use"
    )
    assert done.stderr.count(line) == 1, done.stderr
