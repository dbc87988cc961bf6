"""A Redis Cluster that moves a slot while the proxy serves (an operator's reshard): each
command meets ASK while the slot migrates and MOVED after, and the store follows both without
failing a call or opening its circuit. A cluster of the test's own: the session's is shared."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis

from proxy.store import open_store
from proxy.store.base import Labels, Store, StoreRefused, Write
from proxy.store.guard import GuardedStore
from tests.fixtures_redis import RedisServer, _create_cluster, running_redis

pytestmark = pytest.mark.slow  # a three-node cluster takes seconds to form

CLUSTER_OPTIONS = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
DEADLINE = 0.5
LABELS = Labels(namespace="", model="m")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[RedisServer, ...]]:
    with ExitStack() as stack:
        nodes = tuple(
            stack.enter_context(running_redis(tmp_path / str(i), *CLUSTER_OPTIONS, bus=True))
            for i in range(3)
        )
        _create_cluster(nodes)
        yield nodes


def node_id(node: RedisServer) -> str:
    with redis.Redis(port=node.port) as client:
        return str(client.execute_command("CLUSTER MYID").decode())


def owner(nodes: tuple[RedisServer, ...], slot: int) -> RedisServer:
    with redis.Redis(port=nodes[0].port) as client:
        for start, end, (_, port, *_), *_ in client.execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return next(node for node in nodes if node.port == port)
    raise AssertionError(slot)


def migrate(source: RedisServer, target: RedisServer, name: str) -> None:
    with redis.Redis(port=source.port) as client:
        client.execute_command("MIGRATE", "127.0.0.1", target.port, name, 0, 5000)


def set_slot(node: RedisServer, slot: int, *how: str) -> None:
    with redis.Redis(port=node.port) as client:
        client.execute_command("CLUSTER SETSLOT", slot, *how)


async def guarded(url: str) -> tuple[GuardedStore, Store]:
    """As the server builds it: the deadline per batch, the breaker around it."""
    backend = await open_store(url, deadline=DEADLINE)
    return GuardedStore(backend, timeout=DEADLINE, bounded=True), backend


async def test_a_slot_moved_while_serving_keeps_hits_writes_and_locks_on_one_slot(
    cluster: tuple[RedisServer, ...],
) -> None:
    store, _ = await guarded(cluster[0].url)
    try:
        await store.record(Write("k", "fp_a", b"first", 60, LABELS, model="m"))
        with redis.Redis(port=cluster[0].port) as client:
            slot = int(client.execute_command("CLUSTER KEYSLOT", "repro:e:{k}"))
            assert slot == int(client.execute_command("CLUSTER KEYSLOT", "repro:l:{k}"))
        source = owner(cluster, slot)
        target = next(node for node in cluster if node != source)

        # Migrating: the entry still on the source, then moved (ASK to the target).
        set_slot(target, slot, "IMPORTING", node_id(source))
        set_slot(source, slot, "MIGRATING", node_id(target))
        assert (await store.lookup("k", "m"))[1] == {"fp_a": b"first"}
        migrate(source, target, "repro:e:{k}")
        assert (await store.lookup("k", "m"))[1] == {"fp_a": b"first"}
        _, found, taken = await store.lookup_or_lock("k", "m", "t1", 5)
        assert (found, taken) == ({"fp_a": b"first"}, False)
        assert await store.lock("k", "t-leader", 5)
        await store.put(Write("k", "fp_b", b"second", 60, LABELS, unlock="t-leader"))
        assert not await store.locked("k")
        await store.put(Write("k", "fp_b", b"second", 60, LABELS))
        assert await store.get("k", None) == {"fp_a": b"first", "fp_b": b"second"}
        _, found, taken = await store.lookup_or_lock("k", "m", "t2", 5)
        assert taken is False

        # Moved: every node names the target; the client's map is stale (MOVED).
        with redis.Redis(port=source.port) as client:
            left = client.execute_command("CLUSTER GETKEYSINSLOT", slot, 100)
        for name in left:
            migrate(source, target, name.decode())
        for node in cluster:
            set_slot(node, slot, "NODE", node_id(target))
        assert (await store.lookup("k", "m"))[1] == {"fp_a": b"first", "fp_b": b"second"}
        await store.put(Write("k", "fp_c", b"third", 60, LABELS, unlock="t2"))
        assert (await store.get("k", ["fp_c"])) == {"fp_c": b"third"}
        assert await store.lock("k", "t3", 5)
        await store.unlock("k", "t3")
        assert not await store.locked("k")
        with redis.Redis(port=target.port) as client:
            assert client.hget("repro:e:{k}", "fp_c") == b"third"
        assert not store.is_open
    finally:
        await store.close()


async def test_a_model_state_on_the_move_costs_its_observation_at_most(
    cluster: tuple[RedisServer, ...],
) -> None:
    """The observation names the model's state and its rotations (one slot, two keys, the
    rotations absent until a rotation): while only one of them has moved, it is refused, an
    answer from a live cluster that never opens the circuit, and the lookups beside it stand.
    redis-py resets itself on the way (a run of MOVED replies from the node the slot moves to),
    and the store still closes every connection it opened."""
    store, _ = await guarded(cluster[0].url)
    try:
        await store.record(Write("k", "fp_a", b"first", 60, LABELS, model="m"))
        with redis.RedisCluster(host="127.0.0.1", port=cluster[0].port) as client:
            (name,) = [n.decode() for n in client.scan_iter("repro:fp:*")]
            slot = int(client.keyslot(name))
        source = owner(cluster, slot)
        target = next(node for node in cluster if node != source)
        set_slot(target, slot, "IMPORTING", node_id(source))
        set_slot(source, slot, "MIGRATING", node_id(target))
        migrate(source, target, name)

        observed = asyncio.ensure_future(store.observe_fingerprint("m", "fp_a", 2.0))
        state, found = await store.lookup("k", "m")
        assert state is not None and state.current == "fp_a"
        assert found == {"fp_a": b"first"}
        with pytest.raises(StoreRefused):
            await observed
        assert not store.is_open
    finally:
        await store.close()
