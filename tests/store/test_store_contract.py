"""One storage contract, tested once and run per backend: memory, Redis, Redis Cluster, Redis
over TLS; and per wrapper (circuit breaker, encryption, near-cache) around a real Redis.

The memory store is the reference; Redis runs for real (see fixtures_redis), since atomicity
and key layout cannot be checked against a fake.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from redis.asyncio import Redis, RedisCluster

from bench.procs import free_port
from proxy.core.codec import Codec, raw_size
from proxy.core.entry import Entry
from proxy.core.fingerprints import (
    ANSWERS_KEPT,
    BACKS_KEPT,
    FINGERPRINTS_KEPT,
    MODELS_KEPT,
    ROTATIONS_KEPT,
    ROUTED_KEPT,
    FingerprintSeen,
    ModelFingerprints,
    Observation,
    Rotation,
)
from proxy.core.routes import FLEET, routed
from proxy.store import MemoryStore, Store, StoreError, open_store, parse_size
from proxy.store.base import Labels, Selector, Usage, Write
from proxy.store.encrypted import EncryptedStore
from proxy.store.guard import GuardedStore
from proxy.store.memory import ENTRY_OVERHEAD
from proxy.store.near import NearCache
from proxy.store.redis import RedisStore
from proxy.store.wrapper import StoreWrapper
from tests.egress_peers import Authority
from tests.fixtures_redis import RedisClusterNodes, running_redis
from tests.fixtures_tls import TlsRedis

Elapse = Callable[[float], Awaitable[None]]
T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class StoreContract:
    """What every backend must do; subclasses provide `store` and `elapse` (let time pass)."""

    @pytest.fixture
    def store(self) -> Store:
        raise NotImplementedError

    @pytest.fixture
    def elapse(self) -> Elapse:
        raise NotImplementedError

    async def test_get_on_empty(self, store: Store) -> None:
        assert await store.get("k", ["fp_a"]) == {}
        assert await store.get("k", None) == {}

    async def test_put_then_get_by_fingerprint(self, store: Store) -> None:
        await store.put(Write("k", "fp_a", b"A", 0))
        assert await store.get("k", ["fp_a"]) == {"fp_a": b"A"}
        assert await store.get("k", ["fp_b"]) == {}
        assert await store.get("other", ["fp_a"]) == {}

    async def test_several_fingerprints_under_one_key(self, store: Store) -> None:
        await store.put(Write("k", "fp_a", b"A", 0))
        await store.put(Write("k", "fp_b", b"B", 0))
        assert await store.get("k", ["fp_b", "fp_c"]) == {"fp_b": b"B"}
        assert await store.get("k", None) == {"fp_a": b"A", "fp_b": b"B"}
        assert await store.get("k", []) == {}

    @pytest.mark.parametrize("ttl", [0, 3600])
    async def test_a_key_keeps_a_bounded_number_of_answers(self, store: Store, ttl: int) -> None:
        """An upstream naming a new fingerprint with every answer added one to the key with
        every miss, and every lookup of the key read them all."""
        written = [f"fp_{index:02d}" for index in range(ANSWERS_KEPT + 12)]
        for fingerprint in written:
            await store.put(Write("k", fingerprint, fingerprint.encode(), ttl))
            held = await store.get("k", None)
            assert len(held) <= ANSWERS_KEPT and held[fingerprint] == fingerprint.encode()
        assert len(await store.get("k", None)) == ANSWERS_KEPT
        await store.record(Write("k", "fp_new", b"new", ttl, model="m"))
        held = await store.get("k", None)
        assert len(held) == ANSWERS_KEPT and held["fp_new"] == b"new"

    async def test_put_replaces_and_keeps_empty_values(self, store: Store) -> None:
        await store.put(Write("k", "fp_a", b"old", 0))
        await store.put(Write("k", "fp_a", b"", 0))
        assert await store.get("k", ["fp_a"]) == {"fp_a": b""}

    async def test_delete_forgets_every_fingerprint(self, store: Store) -> None:
        await store.put(Write("k", "fp_a", b"A", 0))
        await store.put(Write("k", "fp_b", b"B", 0))
        await store.put(Write("kept", "fp_a", b"K", 0))
        await store.delete("k")
        await store.delete("never-stored")
        assert await store.get("k", None) == {}
        assert await store.get("kept", None) == {"fp_a": b"K"}

    async def test_ttl_expiry(self, store: Store, elapse: Elapse) -> None:
        await store.put(Write("short", "fp_a", b"S", 1))
        await store.put(Write("forever", "fp_a", b"F", 0))
        assert await store.get("short", None) == {"fp_a": b"S"}
        await elapse(1)
        assert await store.get("short", None) == {}
        assert await store.get("forever", None) == {"fp_a": b"F"}

    async def test_observe_sequence(self, store: Store) -> None:
        observe = store.observe_fingerprint
        assert await observe("m", "fp_a", 100.0) == Observation(None, True, False, "fp_a")
        assert await observe("m", "fp_a", 101.0) == Observation("fp_a", False, False, "fp_a")
        assert await observe("m", "fp_b", 102.0) == Observation("fp_a", True, True, "fp_b")
        assert await observe("m", "fp_a", 103.0) == Observation("fp_b", False, True, "fp_a")
        assert await store.fingerprints("m") == ModelFingerprints(
            current="fp_a",
            seen=(
                FingerprintSeen("fp_a", 100.0, 103.0, 3),
                FingerprintSeen("fp_b", 102.0, 102.0, 1),
            ),
            changes_back=(103.0,),
        )

    async def test_every_change_of_current_joins_the_history(self, store: Store) -> None:
        for moment, fingerprint in enumerate(["fp_1", "fp_2", "fp_2", "fp_1", "fp_3", "fp_2"]):
            await store.observe_fingerprint("m", fingerprint, float(moment))
        assert await store.rotations("m") == (
            Rotation("fp_1", "fp_2", 1.0, back=False),
            Rotation("fp_2", "fp_1", 3.0, back=True),
            Rotation("fp_1", "fp_3", 4.0, back=False),
            Rotation("fp_3", "fp_2", 5.0, back=True),
        )
        state = await store.fingerprints("m")
        assert state is not None and state.changes_back == (3.0, 5.0)
        assert await store.rotations("never") == ()

    async def test_the_history_and_the_changes_back_stay_bounded(self, store: Store) -> None:
        for moment in range(ROTATIONS_KEPT + 10):
            await store.observe_fingerprint("m", f"fp_{moment % 2}", float(moment))
        rotations = await store.rotations("m")
        assert len(rotations) == ROTATIONS_KEPT
        assert rotations[-1] == Rotation("fp_0", "fp_1", float(ROTATIONS_KEPT + 9), back=True)
        state = await store.fingerprints("m")
        assert state is not None
        assert state.changes_back == tuple(
            float(t) for t in range(ROTATIONS_KEPT + 10 - BACKS_KEPT, ROTATIONS_KEPT + 10)
        )

    async def test_concurrent_changes_back_agree_on_one_change(self, store: Store) -> None:
        await store.observe_fingerprint("m", "fp_a", 1.0)
        await store.observe_fingerprint("m", "fp_b", 2.0)
        observations = await asyncio.gather(
            *(store.observe_fingerprint("m", "fp_a", 3.0) for _ in range(20))
        )
        assert sum(observation.changed for observation in observations) == 1
        assert [o.back for o in observations if o.changed] == [True]
        assert len(await store.rotations("m")) == 2

    async def test_a_late_flush_of_repeats_does_not_move_current_back(self, store: Store) -> None:
        await store.observe_fingerprint("m", "fp_a", 1.0)
        await store.observe_fingerprint("m", "fp_b", 2.0)
        late = await store.observe_fingerprint("m", "fp_a", 1.5, count=4, moves=False)
        assert late == Observation("fp_b", False, False, "fp_b")
        state = await store.fingerprints("m")
        assert state is not None and state.current == "fp_b"
        assert state.seen[0] == FingerprintSeen("fp_a", 1.0, 1.5, 5)
        assert len(await store.rotations("m")) == 1
        unknown = await store.observe_fingerprint("m", "fp_c", 3.0, moves=False)
        assert unknown == Observation("fp_b", True, True, "fp_c")

    async def test_the_state_read_follows_every_observation(self, store: Store) -> None:
        await store.observe_fingerprint("m", "fp_a", 1.0)
        first = await store.fingerprints("m")
        await store.observe_fingerprint("m", "fp_a", 2.0)
        await store.observe_fingerprint("m", "fp_b", 3.0)
        assert first == ModelFingerprints("fp_a", (FingerprintSeen("fp_a", 1.0, 1.0, 1),))
        assert await store.fingerprints("m") == ModelFingerprints(
            "fp_b", (FingerprintSeen("fp_a", 1.0, 2.0, 2), FingerprintSeen("fp_b", 3.0, 3.0, 1))
        )
        assert (await store.lookup("k", "m"))[0] == await store.fingerprints("m")

    async def test_unknown_model_has_no_fingerprints(self, store: Store) -> None:
        assert await store.fingerprints("never") is None
        assert await store.all_fingerprints() == {}

    async def test_times_are_exact_and_last_seen_never_goes_back(self, store: Store) -> None:
        await store.observe_fingerprint("m", "fp_a", T0 + 0.123456)
        await store.observe_fingerprint("m", "fp_a", T0 - 50.0)
        state = await store.fingerprints("m")
        assert state is not None
        assert state.seen == (FingerprintSeen("fp_a", T0 + 0.123456, T0 + 0.123456, 2),)

    async def test_routed_lineages_are_bounded_apart_and_never_push_out_a_model(
        self, store: Store
    ) -> None:
        """More routed lineages than models kept (a client inventing a keyed header value per
        request) leave at most ROUTED_KEPT of them after the keep, and every model's state."""
        await store.observe_fingerprint("m", "fp", 1.0)
        lineages = [f"m{FLEET}{number:016x}" for number in range(MODELS_KEPT + 8)]
        for start in range(0, len(lineages), 64):
            batch = lineages[start : start + 64]
            await asyncio.gather(*(store.observe_fingerprint(n, "fp_r", 2.0) for n in batch))
        await kept(store)
        assert await store.fingerprints("m") is not None
        left = [lineage for lineage in await store.all_fingerprints() if routed(lineage)]
        assert len(left) == ROUTED_KEPT
        assert "m" in await store.all_fingerprints()

    async def test_all_fingerprints_per_model(self, store: Store) -> None:
        await store.observe_fingerprint("org/{odd}:model", "fp_1", 1.0)
        await store.observe_fingerprint("gpt", "fp_2", 2.0)
        await store.observe_fingerprint("gpt", "fp_3", 3.0)
        assert await store.all_fingerprints() == {
            "org/{odd}:model": ModelFingerprints("fp_1", (FingerprintSeen("fp_1", 1.0, 1.0, 1),)),
            "gpt": ModelFingerprints(
                "fp_3", (FingerprintSeen("fp_2", 2.0, 2.0, 1), FingerprintSeen("fp_3", 3.0, 3.0, 1))
            ),
        }

    async def test_a_model_remembers_a_bounded_number_of_fingerprints(self, store: Store) -> None:
        """An upstream naming a new fingerprint with every answer must not grow what each
        lookup reads: past the bound, the one seen last longest ago goes, never the current."""
        await store.observe_fingerprint("m", "fp_first", 1.0)
        await store.observe_fingerprint("m", "fp_first", 500.0)  # seen again, late
        for index in range(FINGERPRINTS_KEPT + 8):
            await store.observe_fingerprint("m", f"fp_{index}", 10.0 + index)
        state = await store.fingerprints("m")
        assert state is not None
        kept = [seen.fingerprint for seen in state.seen]
        assert len(kept) == FINGERPRINTS_KEPT
        assert state.current == kept[-1] == f"fp_{FINGERPRINTS_KEPT + 7}"
        assert "fp_first" in kept  # its last_seen is the latest but the current's
        assert kept[1:] == [f"fp_{i}" for i in range(9, FINGERPRINTS_KEPT + 8)]
        observation = await store.observe_fingerprint("m", "fp_0", 1000.0)  # forgotten: new
        assert observation.new and observation.changed and not observation.back

    async def test_fingerprint_names_do_not_collide_with_bookkeeping(self, store: Store) -> None:
        for index, name in enumerate(["current", "model", "seen", "fp:x"]):
            await store.observe_fingerprint("m", name, float(index))
        state = await store.fingerprints("m")
        assert state is not None
        assert state.current == "fp:x"
        assert [seen.fingerprint for seen in state.seen] == ["current", "model", "seen", "fp:x"]

    async def test_concurrent_observes_agree_on_one_new(self, store: Store) -> None:
        await store.observe_fingerprint("m", "fp_old", 1.0)
        observations = await asyncio.gather(
            *(store.observe_fingerprint("m", "fp_new", 2.0) for _ in range(20))
        )
        assert sum(observation.new for observation in observations) == 1
        state = await store.fingerprints("m")
        assert state is not None
        assert state.seen[-1] == FingerprintSeen("fp_new", 2.0, 2.0, 20)

    async def test_secret_first_candidate_wins(self, store: Store) -> None:
        assert await store.secret(b"first") == b"first"
        assert await store.secret(b"second") == b"first"

    async def test_the_first_dictionary_wins_and_reading_stores_nothing(self, store: Store) -> None:
        assert await store.dictionary(None) is None
        assert await store.dictionary(None) is None
        assert await store.dictionary(b"first") == b"first"
        assert await store.dictionary(b"second") == b"first"
        assert await store.dictionary(None) == b"first"
        assert await store.secret(b"s") == b"s"  # a separate value
        assert await store.dictionary(None) == b"first"

    async def test_concurrent_secrets_agree(self, store: Store) -> None:
        secrets = await asyncio.gather(*(store.secret(bytes([index])) for index in range(10)))
        assert len(set(secrets)) == 1

    async def test_ping(self, store: Store) -> None:
        await store.ping()

    async def test_lock_is_exclusive_and_released_only_by_its_holder(self, store: Store) -> None:
        assert not await store.locked("k")
        assert await store.lock("k", "leader", 30)
        assert await store.locked("k")
        assert not await store.lock("k", "other", 30)
        await store.unlock("k", "other")
        assert await store.locked("k")
        await store.unlock("k", "leader")
        assert not await store.locked("k")
        assert await store.lock("k", "other", 30)

    async def test_attempts_keep_the_newest_within_the_window(self, store: Store) -> None:
        assert await store.attempts("a", T0, 60, 3, False) == ()
        for step in range(5):
            await store.attempts("a", T0 + step, 60, 3, True)
        assert await store.attempts("a", T0 + 5, 60, 3, False) == (T0 + 2, T0 + 3, T0 + 4)
        assert await store.attempts("b", T0 + 5, 60, 3, False) == ()
        assert await store.attempts("a", T0 + 62.5, 60, 3, False) == (T0 + 3, T0 + 4)
        assert await store.attempts("a", T0 + 63.5, 60, 3, True) == (T0 + 4, T0 + 63.5)

    async def test_a_revocation_holds_until_its_time_is_over(
        self, store: Store, elapse: Elapse
    ) -> None:
        assert not await store.marked("s")
        await store.mark("s", 0.3)
        await store.mark("long", 60)
        assert await store.marked("s") and not await store.marked("t")
        await elapse(0.3)
        assert not await store.marked("s")
        assert await store.marked("long")

    async def test_lookup_or_lock_takes_the_lock_only_for_an_empty_key(self, store: Store) -> None:
        await store.observe_fingerprint("m", "fp", 1.0)
        state, found, locked = await store.lookup_or_lock("k", "m", "leader", 30)
        assert state is not None and state.current == "fp"
        assert (found, locked) == ({}, True)
        assert await store.locked("k")
        assert (await store.lookup_or_lock("k", "m", "other", 30))[1:] == ({}, False)
        await store.put(Write("k", "fp", b"v", 0, unlock="leader"))
        assert (await store.lookup_or_lock("k", "m", "other", 30))[1:] == ({"fp": b"v"}, False)
        assert not await store.locked("k")

    async def test_an_observation_can_stand_for_several_answers(self, store: Store) -> None:
        first = await store.observe_fingerprint("m", "fp", 1.0, count=3)
        assert first == Observation(None, True, False, "fp")
        again = await store.observe_fingerprint("m", "fp", 4.0, count=2)
        assert again == Observation("fp", False, False, "fp")
        state = await store.fingerprints("m")
        assert state == ModelFingerprints("fp", (FingerprintSeen("fp", 1.0, 4.0, 5),))

    async def test_without_a_model_only_the_values_are_read(self, store: Store) -> None:
        """A caller that holds the model's state (the near-cache) asks for the values alone."""
        await store.observe_fingerprint("m", "fp", 1.0)
        await store.put(Write("k", "fp", b"v", 0))
        assert await store.lookup("k", None) == (None, {"fp": b"v"})
        assert await store.lookup_or_lock("k", None, "leader", 30) == (None, {"fp": b"v"}, False)
        assert await store.lookup_or_lock("empty", None, "leader", 30) == (None, {}, True)
        assert await store.locked("empty")

    async def test_record_observes_then_stores_and_releases_the_lock(self, store: Store) -> None:
        assert await store.lock("k", "leader", 30)
        labels = Labels(namespace="ns", model="m")
        seen = await store.record(Write("k", "fp_a", b"A", 0, labels, "leader", "m", 5.0))
        assert seen == Observation(previous=None, new=True, changed=False, current="fp_a")
        assert not await store.locked("k")
        state, found = await store.lookup("k", "m")
        assert state == ModelFingerprints("fp_a", (FingerprintSeen("fp_a", 5.0, 5.0, 1),))
        assert found == {"fp_a": b"A"}
        assert list(await store.all_fingerprints()) == ["m"]  # the model is in the index
        assert [item[:2] async for item in store.entries(Selector(namespace="ns"))] == [
            ("k", "fp_a")
        ]
        again = await store.record(Write("k2", "fp_a", b"B", 0, labels, None, "m", 6.0))
        assert again == Observation(previous="fp_a", new=False, changed=False, current="fp_a")
        rotated = await store.record(Write("k", "fp_b", b"C", 0, labels, None, "m", 7.0))
        assert rotated == Observation(previous="fp_a", new=True, changed=True, current="fp_b")
        assert await store.get("k", None) == {"fp_a": b"A", "fp_b": b"C"}
        state = await store.fingerprints("m")
        assert state is not None and state.current == "fp_b"
        assert [(s.fingerprint, s.count, s.last_seen) for s in state.seen] == [
            ("fp_a", 2, 6.0),
            ("fp_b", 1, 7.0),
        ]

    async def test_a_leaders_write_releases_the_lock_even_when_taken_over(
        self, store: Store
    ) -> None:
        """Another holds the lock only after the leader's expired; once the entry is filled,
        the lock has nothing left to guard, so the write releases it anyway."""
        assert await store.lock("k", "leader", 30)
        await store.put(Write("k", "fp", b"v", 0))
        assert await store.locked("k")  # a write that led nothing leaves the lock alone
        await store.unlock("k", "leader")
        assert await store.lock("k", "took over", 30)
        await store.put(Write("k", "fp", b"v2", 0, unlock="leader"))
        assert not await store.locked("k")
        assert await store.lookup_or_lock("k", None, "next", 30) == (None, {"fp": b"v2"}, False)
        assert not await store.locked("k")  # found: no lock taken, none left behind
        await store.put(Write("k2", "fp", b"v", 0, unlock="leader"))  # no lock: nothing to release
        assert await store.lock("k2", "other", 30)

    async def test_a_write_with_a_ttl_releases_the_lock_too(self, store: Store) -> None:
        assert await store.lock("k", "leader", 30)
        await store.put(Write("k", "fp", b"v", 60, unlock="leader"))
        assert not await store.locked("k")
        assert await store.get("k", None) == {"fp": b"v"}

    async def test_lock_expires(self, store: Store, elapse: Elapse) -> None:
        """Fractions of a second count, as for revocations (and keep the real-time waits short)."""
        assert await store.lock("k", "leader", 0.3)
        assert await store.locked("k")
        await elapse(0.3)
        assert not await store.locked("k")
        assert await store.lock("k", "next", 0.3)

    async def test_purge_selectors_match_literally_never_as_patterns(self, store: Store) -> None:
        """An operator's selector may come from anywhere (a namespace a client chose): glob or
        regex syntax in it matches only itself, at the cost of a comparison."""
        await store.put(Write("k1", "fp_a", b"1", 0, Labels("ns1", "m1")))
        await store.put(Write("k2", "fp_a", b"2", 0, Labels("*", "m[0-9]")))
        for hostile in ("*", "ns?", "ns[0-9]", ".*", "(a+)+$", "\\", "ns1\x00"):
            assert await store.purge(Selector(model=hostile), dry_run=True) == 0
            assert await store.purge(Selector(fingerprint=hostile), dry_run=True) == 0
        assert await store.purge(Selector(namespace="*"), dry_run=False) == 1
        assert await store.purge(Selector(model="m1"), dry_run=True) == 1
        assert [key async for key, _, _ in store.entries(Selector(namespace="ns?"))] == []

    async def test_purge_selects_by_namespace_model_and_fingerprint(self, store: Store) -> None:
        await store.put(Write("k1", "fp_a", b"1", 0, Labels("ns1", "m1")))
        await store.put(Write("k1", "fp_b", b"2", 0, Labels("ns1", "m1")))
        await store.put(Write("k2", "fp_a", b"3", 0, Labels("ns2", "m1")))
        await store.put(Write("k3", "fp_a", b"4", 0, Labels("ns2", "m2")))
        assert await store.purge(Selector(namespace="ns1"), dry_run=True) == 2
        assert await store.get("k1", None) == {"fp_a": b"1", "fp_b": b"2"}
        assert await store.purge(Selector(model="m1", fingerprint="fp_a"), dry_run=False) == 2
        assert await store.get("k1", None) == {"fp_b": b"2"}
        assert await store.get("k2", None) == {}
        assert await store.get("k3", None) == {"fp_a": b"4"}
        usage = await store.usage()
        assert usage.entries == 2
        assert usage.bytes > 0
        assert await store.purge(Selector(), dry_run=False) == 2
        assert await store.usage() == Usage(0, 0, 0)

    async def test_usage_counts_what_compressed_answers_stand_for(self, store: Store) -> None:
        entry = Entry(b'{"choices": []}' * 50, "application/json", "fp_a", 1.0, "m1")
        packed, plain = Codec(level=1).pack(entry), Codec(level=0).pack(entry)
        await store.put(Write("k1", "fp_a", packed, 0, Labels("ns1", "m1")))
        await store.put(Write("k2", "fp_a", b"not an entry", 0, Labels("ns1", "m1")))
        usage = await store.usage()
        assert usage.entries == 2
        saved = raw_size(packed) - len(packed)
        assert saved > 500
        assert saved - 28 <= usage.raw_bytes - usage.bytes <= saved  # encrypted: nonce and tag
        assert raw_size(packed) == len(plain) - 6

    async def test_entries_lists_what_the_selector_matches(self, store: Store) -> None:
        await store.put(Write("k1", "fp_a", b"1", 0, Labels("ns1", "m1")))
        await store.put(Write("k1", "fp_b", b"2", 0, Labels("ns1", "m1")))
        await store.put(Write("k2", "fp_a", b"3", 0, Labels("ns2", "m2")))
        everything = sorted([item async for item in store.entries(Selector())])
        assert everything == [("k1", "fp_a", b"1"), ("k1", "fp_b", b"2"), ("k2", "fp_a", b"3")]
        chosen = [item async for item in store.entries(Selector(model="m2"))]
        assert chosen == [("k2", "fp_a", b"3")]

    async def test_concurrent_lock_attempts_have_one_winner(self, store: Store) -> None:
        taken = await asyncio.gather(*(store.lock("k", f"t{i}", 30) for i in range(20)))
        assert sum(taken) == 1


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def store(self, clock: FakeClock) -> Store:
        return MemoryStore(clock=clock)

    @pytest.fixture
    def elapse(self, clock: FakeClock) -> Elapse:
        async def elapse(seconds: float) -> None:
            clock.now += seconds

        return elapse

    async def test_lru_evicts_least_recently_used_by_bytes(self) -> None:
        store = MemoryStore(max_bytes=3 * (100 + 2 + 2 + ENTRY_OVERHEAD))
        for key in ("k1", "k2", "k3"):
            await store.put(Write(key, "fp", bytes(100), 0))
        await store.get("k1", ["fp"])
        await store.put(Write("k4", "fp", bytes(100), 0))
        assert [key for key in ("k1", "k2", "k3", "k4") if await store.get(key, None)] == [
            "k1",
            "k3",
            "k4",
        ]

    async def test_a_purge_of_one_answer_leaves_the_key_its_place(self) -> None:
        one = 100 + 2 + 2 + ENTRY_OVERHEAD
        store = MemoryStore(max_bytes=3 * one)
        await store.put(Write("k1", "fa", bytes(100), 0))
        await store.put(Write("k1", "fb", bytes(100), 0))
        await store.put(Write("k2", "fa", bytes(100), 0))
        assert await store.purge(Selector(fingerprint="fb"), dry_run=False) == 1
        await store.put(Write("k3", "fa", bytes(100), 0))
        await store.put(Write("k4", "fa", bytes(100), 0))
        assert [key for key in ("k1", "k2", "k3", "k4") if await store.get(key, None)] == [
            "k2",
            "k3",
            "k4",
        ]
        assert (await store.usage()).entries == 3

    async def test_oversize_value_is_not_stored(self) -> None:
        store = MemoryStore(max_bytes=100 + ENTRY_OVERHEAD)
        await store.put(Write("small", "fp", b"s", 0))
        await store.put(Write("big", "fp", bytes(200), 0))
        assert await store.get("big", None) == {}
        assert await store.get("small", None) == {"fp": b"s"}

    async def test_a_write_too_large_to_keep_still_releases_its_lock(self) -> None:
        store = MemoryStore(max_bytes=200)
        assert await store.lock("k", "leader", 30)
        await store.put(Write("k", "fp", bytes(200), 0, unlock="leader"))
        assert await store.get("k", None) == {}
        assert not await store.locked("k")

    async def test_expiry_is_exact(self, clock: FakeClock) -> None:
        store = MemoryStore(clock=clock)
        await store.put(Write("k", "fp", b"v", 10))
        clock.now = T0 + 9.999
        assert await store.get("k", None) == {"fp": b"v"}
        clock.now = T0 + 10
        assert await store.get("k", None) == {}

    async def test_expired_entries_stop_counting(self, clock: FakeClock) -> None:
        store = MemoryStore(max_bytes=2 * (1 + 2 + 2 + ENTRY_OVERHEAD), clock=clock)
        await store.put(Write("k1", "fp", b"1", 0))
        await store.put(Write("k2", "fp", b"2", 5))
        clock.now += 5
        await store.put(Write("k3", "fp", b"3", 0))
        assert await store.get("k1", None) == {"fp": b"1"}

    async def test_put_without_ttl_cancels_the_earlier_one(self, clock: FakeClock) -> None:
        store = MemoryStore(clock=clock)
        await store.put(Write("k", "fp", b"v1", 1))
        await store.put(Write("k", "fp", b"v2", 0))
        clock.now += 2
        assert await store.get("k", None) == {"fp": b"v2"}

    async def test_expiry_survives_many_rewrites(self, clock: FakeClock) -> None:
        store = MemoryStore(clock=clock)
        for _ in range(300):
            await store.put(Write("long", "fp", b"v", 10))
        await store.put(Write("short", "fp", b"w", 5))
        clock.now += 5
        assert [await store.get(key, None) for key in ("long", "short")] == [{"fp": b"v"}, {}]
        clock.now += 5
        assert await store.get("long", None) == {}


class RealTime:
    """Backends whose time cannot be faked: Redis expires keys by its own clock."""

    @pytest.fixture
    def elapse(self) -> Elapse:
        return lambda seconds: asyncio.sleep(seconds + 0.1)


class RedisContract(RealTime, StoreContract):
    """The contract plus what only Redis can get wrong: layout, bytes, TTL, cluster slots."""

    @pytest.fixture
    def url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    async def store(self, url: str) -> AsyncIterator[Store]:
        store = await open_store(url)
        yield store
        await store.close()

    async def test_purge_scans_past_one_batch(self, store: Store) -> None:
        for start in range(0, 1200, 100):
            await asyncio.gather(
                *(
                    store.put(Write(f"k{i}", "fp", b"v", 0, Labels("big", "m")))
                    for i in range(start, start + 100)
                )
            )
        await store.put(Write("other", "fp", b"v", 0, Labels("small", "m")))
        assert await store.purge(Selector(namespace="big"), dry_run=True) == 1200
        assert await store.purge(Selector(namespace="big"), dry_run=False) == 1200
        assert (await store.usage()).entries == 1
        assert await store.get("other", None) == {"fp": b"v"}

    async def test_entries_reads_past_one_batch(self, store: Store) -> None:
        for start in range(0, 1100, 100):
            await asyncio.gather(
                *(store.put(Write(f"k{i}", "fp", b"v", 0)) for i in range(start, start + 100))
            )
        keys = {key async for key, _, _ in store.entries(Selector())}
        assert keys == {f"k{i}" for i in range(1100)}

    @pytest.fixture
    async def raw(self, url: str) -> AsyncIterator[Redis | RedisCluster]:
        """A plain client, to look at what the store wrote; a standalone one unless overridden."""
        client = Redis.from_url(url)
        yield client
        await client.aclose()

    async def test_keys_carry_hash_tags(self, store: Store, raw: Redis | RedisCluster) -> None:
        await store.put(Write("abc123", "fp_a", b"v", 0))
        await store.observe_fingerprint("org/{odd}", "fp_a", 1.0)
        await store.secret(b"s")
        keys = await _all_keys(raw)
        assert [key for key in keys if b"abc123" in key] == [b"repro:e:{abc123}"]
        assert not [key for key in keys if b"odd" in key]
        model_keys = [key for key in keys if key.startswith(b"repro:fp:")]
        assert len(model_keys) == 1
        assert model_keys[0].count(b"{") == model_keys[0].count(b"}") == 1

    async def test_values_are_exactly_the_bytes_put(
        self, store: Store, raw: Redis | RedisCluster
    ) -> None:
        value = bytes(range(256)) * 3
        await store.put(Write("k", "fp_a", value, 0))
        assert await raw.hget("repro:e:{k}", "fp_a") == value
        assert await store.get("k", None) == {"fp_a": value}

    async def test_ttl_is_set_and_cleared(self, store: Store, raw: Redis | RedisCluster) -> None:
        await store.put(Write("k", "fp_a", b"v", 30))
        assert 0 < await raw.ttl("repro:e:{k}") <= 30
        await store.put(Write("k", "fp_b", b"v", 0))
        assert await raw.ttl("repro:e:{k}") == -1


async def kept(store: Store) -> None:
    """A round of the proxy's keep where the backend has one (Redis trims its indexes there;
    the memory store keeps its bounds at each observation)."""
    while isinstance(store, GuardedStore | StoreWrapper):
        store = store.inner
    if isinstance(store, RedisStore):
        await store.keep()


async def _all_keys(raw: Redis | RedisCluster) -> list[bytes]:
    """Every key on every primary (raw clients return bytes)."""
    if isinstance(raw, RedisCluster):
        keys = await raw.keys(target_nodes=RedisCluster.PRIMARIES)
    else:
        keys = await raw.keys()
    return cast("list[bytes]", keys)


class TestRedisStore(RedisContract):
    @pytest.fixture
    def url(self, redis_url: str) -> str:
        return redis_url

    async def test_forced_cluster_mode_fails_on_a_standalone_server(self, url: str) -> None:
        store = await open_store(url + "?cluster=true")
        with pytest.raises(StoreError):
            await store.ping()
        await store.close()

    async def test_a_name_scan_returns_twice_counts_once(self, store: Store) -> None:
        """SCAN may return a key twice while Redis grows its table: a purge, an export and the
        stats must each see every entry once."""
        assert isinstance(store, RedisStore)
        for n in range(3):
            await store.put(Write(f"k{n}", "fp", b"v", 0, Labels("ns", "m")))
        scan = store._client.scan_iter

        async def twice(**options: Any) -> AsyncIterator[bytes]:
            async for name in scan(**options):
                yield name
                yield name

        store._client.scan_iter = twice
        assert (await store.usage()).entries == 3
        assert len([item async for item in store.entries(Selector())]) == 3
        assert await store.purge(Selector(namespace="ns"), dry_run=True) == 3

    async def test_store_error_when_the_server_is_gone(self, tmp_path: Path) -> None:
        with running_redis(tmp_path) as server:
            store = await open_store(server.url)
            await store.put(Write("k", "fp_a", b"secret-value", 0))
        with pytest.raises(StoreError, match="redis get failed") as raised:
            await store.get("k", None)
        assert "secret-value" not in str(raised.value)
        await store.close()


class TestRedisClusterStore(RedisContract):
    pytestmark = pytest.mark.slow  # a three-node cluster takes seconds to form

    @pytest.fixture
    def url(self, redis_cluster_url: str) -> str:
        return redis_cluster_url

    @pytest.fixture
    async def raw(self, url: str) -> AsyncIterator[RedisCluster]:
        client = RedisCluster.from_url(url)
        yield client
        await client.aclose()

    async def test_open_store_detects_the_cluster(
        self, store: Store, redis_cluster: RedisClusterNodes
    ) -> None:
        keys = [f"key-{index}" for index in range(30)]
        for key in keys:
            await store.put(Write(key, "fp", key.encode(), 0))
        assert [await store.get(key, ["fp"]) for key in keys] == [
            {"fp": key.encode()} for key in keys
        ]
        standalone = await open_store(redis_cluster.url + "?cluster=false")
        with pytest.raises(StoreError):
            for key in keys:
                await standalone.get(key, ["fp"])
        await standalone.close()


class TestRedisTlsStore(RedisContract):
    """Standalone Redis over TLS, as managed services offer it: redis-py's TLS connection,
    trusting the CA the URL names (`ssl_ca_certs`)."""

    @pytest.fixture
    def url(self, redis_tls: TlsRedis) -> str:
        redis_tls.flushall()
        return redis_tls.url

    async def test_a_certificate_the_ca_did_not_sign_is_refused(
        self, redis_tls: TlsRedis, tmp_path: Path
    ) -> None:
        stranger = Authority.create(tmp_path, "stranger")
        url = redis_tls.url.replace(str(redis_tls.ca), str(stranger.pem))
        store = await open_store(url)
        try:
            with pytest.raises(StoreError, match="redis ping failed"):
                await store.ping()
        finally:
            await store.close()


class TestGuardedRedisStore(RealTime, StoreContract):
    """As the proxy runs it: the breaker trusts the store's own deadline (`bounded`)."""

    @pytest.fixture
    async def store(self, redis_url: str) -> AsyncIterator[Store]:
        store = GuardedStore(await open_store(redis_url, deadline=2.0), timeout=2.0, bounded=True)
        yield store
        await store.close()


class TestEncryptedRedisStore(RealTime, StoreContract):
    @pytest.fixture
    async def store(self, redis_url: str) -> AsyncIterator[Store]:
        store = EncryptedStore(await open_store(redis_url), [os.urandom(32)])
        yield store
        await store.close()


class TestNearCacheRedisStore(RealTime, StoreContract):
    """Every answer it serves from memory must be what Redis holds: its own writes drop its
    copy at once, and the contract reads right after them."""

    @pytest.fixture(params=["tcp", "tls"])
    def url(self, request: pytest.FixtureRequest) -> str:
        """The feed has a connection of its own, which must take the store's TLS settings."""
        if request.param == "tcp":
            return cast(str, request.getfixturevalue("redis_url"))
        server = cast(TlsRedis, request.getfixturevalue("redis_tls"))
        server.flushall()
        return server.url

    @pytest.fixture
    async def store(self, url: str) -> AsyncIterator[Store]:
        backend = await open_store(url, "near-contract")
        assert isinstance(backend, RedisStore)
        near = NearCache(backend, backend, 1 << 20)
        listening = asyncio.ensure_future(near.run())
        try:
            for _ in range(250):
                if near.live:
                    break
                await asyncio.sleep(0.02)
            assert near.live
            yield near
        finally:
            listening.cancel()
            await near.close()


@pytest.mark.parametrize("query", ["", "?cluster=true"])
async def test_unreachable_redis_fails_fast_without_failing_to_open(query: str) -> None:
    started = time.monotonic()
    store = await open_store(f"redis://127.0.0.1:{free_port()}/0{query}")
    with pytest.raises(StoreError):
        await store.ping()
    await store.close()
    assert time.monotonic() - started < 2


async def test_silent_redis_times_out_instead_of_hanging() -> None:
    """A server that accepts and never answers must not hold a request for redis-py's defaults."""
    accepted: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda _, writer: accepted.append(writer), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = await open_store(f"redis://127.0.0.1:{port}/0?cluster=false")
    started = time.monotonic()
    with pytest.raises(StoreError, match="redis ping failed"):
        await store.ping()
    assert time.monotonic() - started < 3
    await store.close()
    for writer in accepted:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_credentials_and_database_come_from_the_url(tmp_path: Path) -> None:
    with running_redis(tmp_path) as server:
        with redis.Redis(port=server.port) as admin:
            admin.acl_setuser(
                "alice",
                enabled=True,
                passwords=["+s3cret"],
                keys=["*"],
                channels=["repro:invalidate"],
                commands=["+@all"],
            )
            admin.acl_setuser("default", enabled=False)  # from now on nothing works unnamed
        store = await open_store(f"redis://alice:s3cret@127.0.0.1:{server.port}/3")
        try:
            await store.put(Write("k", "fp", b"v", 0))
            assert await store.get("k", None) == {"fp": b"v"}
            with redis.Redis(port=server.port, username="alice", password="s3cret", db=3) as db3:
                assert db3.hget("repro:e:{k}", "fp") == b"v"
        finally:
            await store.close()


async def test_open_store_memory_with_a_bound() -> None:
    store = await open_store("memory://?max_bytes=1KiB")
    await store.put(Write("big", "fp", bytes(2000), 0))
    assert await store.get("big", None) == {}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memcached://user:hunter2@host", "--store: expected memory://"),
        ("memory://?max_bytes=lots", "--store: max_bytes: expected"),
        ("memory://?size=1", "--store.*'size'"),
        ("redis://:hunter2@localhost/0?cluster=maybe", "--store.*cluster"),
    ],
)
async def test_open_store_rejects_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        await open_store(url)
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("1024", 1024), ("512K", 512 * 1024), ("16MiB", 16 * 1024**2), ("1 gib", 1024**3)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "1.5M", "12TB", "MiB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected a number of bytes"):
        parse_size(text)


@pytest.mark.slow  # a three-node cluster takes seconds to form, as for TestRedisClusterStore
async def test_a_burst_on_a_new_cluster_store_does_not_fail(redis_cluster_url: str) -> None:
    """redis-py clients race on their first concurrent commands unless initialized first."""
    store = await open_store(redis_cluster_url)
    try:
        results = await asyncio.gather(
            *(store.lock(f"k{index}", "t", 30) for index in range(300)), return_exceptions=True
        )
        assert results == [True] * 300
        assert all(await asyncio.gather(*(store.locked(f"k{i}") for i in range(300))))
    finally:
        await store.close()
