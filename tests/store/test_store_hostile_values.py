"""What another writer to the proxy's Redis leaves where the store reads (an older or newer
replica, a buggy client): the call it spoils fails as a refusal, an answer from a live store,
and never opens the circuit for every other key; what is no fingerprint reads as absent."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
import zstandard

from proxy.core.codec import DICTIONARIES_HELD, MAX_DICTIONARY_BYTES, Codec, dictionary_id
from proxy.core.credentials import scope
from proxy.server.dictionary import Dictionaries
from proxy.server.secret import Secret
from proxy.store import layout
from proxy.store.base import Labels, Selector, Store, StoreRefused, Write
from proxy.store.encrypted import EncryptedStore
from proxy.store.guard import GuardedStore
from proxy.store.redis import RedisStore
from proxy.store.wrapper import StoreWrapper


async def model_key(client: aioredis.Redis, model: bytes) -> bytes:
    (name,) = [
        n async for n in client.scan_iter("repro:fp:*") if await client.hget(n, "model") == model
    ]
    return name


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[tuple[GuardedStore, aioredis.Redis]]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    store = GuardedStore(RedisStore(aioredis.Redis.from_url(redis_url)), timeout=5, threshold=3)
    labels = Labels(namespace="", model="m")
    await store.record(Write("good", "fp_a", b"the good answer", 0, labels, model="m"))
    await store.record(Write("forged", "fp_a", b"an answer", 0, model="n"))
    try:
        yield store, client
    finally:
        await store.close()
        await client.aclose()


async def test_a_field_that_is_no_fingerprint_reads_as_absent(
    stores: tuple[GuardedStore, aioredis.Redis],
) -> None:
    store, client = stores
    await client.hset("repro:e:{forged}", b"\xff\xfe", b"left by another writer")
    for _ in range(4):
        state, values = await store.lookup("forged", "n")
        assert values == {"fp_a": b"an answer"} and state is not None
    assert await store.get("forged", None) == {"fp_a": b"an answer"}


@pytest.mark.parametrize(
    ("forged", "current", "seen"),
    [
        ({"current": b"\xff"}, None, None),
        ({"current": b"fp\r\nX-Injected: 1"}, None, None),
        ({"current": b"x" * 100_000}, None, None),
        ({"fp:fp_a": b"not json"}, None, None),
        ({"fp:fp_a": b"[]"}, None, None),
        ({"fp:fp_a": b'{"first_seen": "a", "last_seen": 1, "count": 1, "order": 1}'}, None, None),
        ({"fp:fp_a": b'{"first_seen": 1e300, "last_seen": 1, "count": 1, "order": 1}'}, None, None),
        ({"fp:fp_a": b'{"first_seen": 1, "last_seen": 1, "count": -1, "order": 1}'}, "fp_a", 0),
        (
            {"fp:fp_a": b'{"first_seen": 1, "last_seen": 1, "count": 1e30, "order": 1}'},
            "fp_a",
            2**63 - 1,
        ),
        ({"backs": b"yesterday \xff 5"}, "fp_a", 1),
    ],
)
async def test_a_forged_model_state_reads_as_absent_and_the_next_answer_writes_it_over(
    stores: tuple[GuardedStore, aioredis.Redis],
    forged: dict[bytes | str, bytes],
    current: str | None,
    seen: int | None,
) -> None:
    """A model's state reaches headers, metric labels and the admin routes: what no script
    writes is left out (a current that is no fingerprint leaves no state), never a failing
    read of every request for the model, nor of every key once the circuit opened."""
    store, client = stores
    name = await model_key(client, b"n")
    await client.hset(name, mapping=forged)
    for _ in range(4):
        state, values = await store.lookup("forged", "n")
        assert values == {"fp_a": b"an answer"}
        assert (state and state.current) == current
        if seen is not None:
            assert state is not None and [s.count for s in state.seen] == [seen]
    assert not store.is_open
    assert (await store.lookup("good", "m"))[1] == {"fp_a": b"the good answer"}

    await store.record(Write("forged", "fp_a", b"answered again", 0, model="n"))
    state, values = await store.lookup("forged", "n")
    assert values == {"fp_a": b"answered again"}
    assert state is not None and state.current == "fp_a" and len(state.seen) == 1


async def test_a_fingerprint_record_of_no_fingerprint_is_left_out(
    stores: tuple[GuardedStore, aioredis.Redis],
) -> None:
    store, client = stores
    name = await model_key(client, b"n")
    record = b'{"first_seen": 1, "last_seen": 1, "count": 1, "order": 9}'
    await client.hset(name, mapping={b"fp:a\r\nb": record, b"fp:\xff": record})
    state, _ = await store.lookup("forged", "n")
    assert state is not None and [seen.fingerprint for seen in state.seen] == ["fp_a"]


async def test_an_entry_of_no_labels_and_no_fingerprint_stops_no_purge(
    stores: tuple[GuardedStore, aioredis.Redis],
) -> None:
    """An operator purges to clean up: one bad entry must not make every purge fail."""
    store, client = stores
    await client.hset("repro:e:{forged}", mapping={b"\xff": b"x", b"\x00labels": b"[1]"})
    await client.hset("repro:e:{odd}", mapping={b"fp_a": b"x", b"\x00labels": b"not json"})
    assert await store.purge(Selector(model="m"), dry_run=False) == 1
    assert await store.lookup("good", "m") == (await store.fingerprints("m"), {})
    exported = sorted([(key, fp) async for key, fp, _ in store.entries(Selector())])
    assert exported == [("forged", "fp_a"), ("odd", "fp_a")]
    assert await store.purge(Selector(), dry_run=False) == 3
    assert await client.keys("repro:e:*") == []


@pytest.mark.parametrize(
    "plant",
    [
        pytest.param({"value": b"a dead replica's"}, id="no-expiry"),
        pytest.param({"value": b"a buggy client's", "px": 86_400_000}, id="a-day"),
        pytest.param({"mapping": {"a": "b"}}, id="a-hash"),
    ],
)
async def test_a_fill_lock_no_leader_could_hold_ends_within_the_lock_timeout(
    redis_url: str, plant: dict[str, object]
) -> None:
    """Every proxy's lock expires within its --lock-timeout. One that would not (no expiry, a
    day's, a value of another type) is given that bound by the first follower to find it:
    left as it is, it made every miss of its key wait a whole lock timeout, for as long as
    it stayed."""
    client = aioredis.Redis.from_url(redis_url)
    store = RedisStore(aioredis.Redis.from_url(redis_url))
    try:
        await client.delete("repro:l:{k}")
        if "mapping" in plant:
            await client.hset("repro:l:{k}", mapping=plant["mapping"])  # type: ignore[arg-type]
        else:
            await client.set("repro:l:{k}", plant["value"], px=plant.get("px"))  # type: ignore[arg-type]
        assert not await store.lock("k", "mine", 0.2)
        assert 0 < await client.pttl("repro:l:{k}") <= 200
        with contextlib.suppress(StoreRefused):  # another type: refused, as coalescing expects
            await store.unlock("k", "mine")  # not ours: left to expire
        assert await client.exists("repro:l:{k}")
    finally:
        await store.close()
        await client.aclose()


async def test_a_fill_lock_within_the_lock_timeout_is_left_alone(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    store = RedisStore(aioredis.Redis.from_url(redis_url))
    try:
        await client.set("repro:l:{k}", b"another replica's", px=60_000)
        assert not await store.lock("k", "mine", 120)
        assert 30_000 < await client.pttl("repro:l:{k}") <= 60_000
        assert await client.get("repro:l:{k}") == b"another replica's"
    finally:
        await store.close()
        await client.aclose()


async def test_a_dictionary_replaced_again_and_again_holds_bounded_memory(redis_url: str) -> None:
    """Each dictionary adopted is held to read the entries it compressed: replaced under a
    running proxy without end, the older ones are let go (their entries then read as a miss)."""
    client = aioredis.Redis.from_url(redis_url)
    store = RedisStore(aioredis.Redis.from_url(redis_url))
    codec = Codec()
    dictionaries = Dictionaries(store, codec, 0, lambda: 0.0)
    try:
        adopted = []
        for _ in range(2 * DICTIONARIES_HELD):
            data = os.urandom(64 * 1024)
            await client.set("repro:dictionary", data)
            await dictionaries.settle()
            adopted.append(dictionary_id(data))
        assert codec.dictionary == adopted[-1]
        assert [codec.knows(number) for number in adopted] == [False] * DICTIONARIES_HELD + [
            True
        ] * DICTIONARIES_HELD
    finally:
        await store.close()
        await client.aclose()


async def test_the_dictionary_and_the_secret_are_read_within_their_bounds(redis_url: str) -> None:
    """A dictionary is read at most once a second while entries name one this process lacks,
    and the secret on every request until it is shared: a value of many MiB at either key
    would be read whole each time, and a secret that long hashed in every new tenant's HMAC."""
    client = aioredis.Redis.from_url(redis_url)
    store = RedisStore(aioredis.Redis.from_url(redis_url))
    try:
        huge = os.urandom(1 << 20) * 16
        await client.set("repro:dictionary", huge)
        found = await store.dictionary(None)
        assert (
            found is not None and MAX_DICTIONARY_BYTES < len(found) <= MAX_DICTIONARY_BYTES + 1024
        )
        with pytest.raises(zstandard.ZstdError):
            Codec().use(found)

        await client.set("repro:secret", huge)
        secret = Secret(store, None)
        await secret.settle()
        assert not secret.provisional and len(secret.value) <= 64
        credentials = (("authorization", "Bearer sk-tenant"),)
        assert secret.tenant(credentials) == scope(credentials, huge)  # partitions unchanged
    finally:
        await store.close()
        await client.aclose()


async def test_the_shared_count_of_guesses_is_read_within_what_it_keeps(redis_url: str) -> None:
    """A set grown by another writer is read as its newest `keep`, not whole on every attempt."""
    client = aioredis.Redis.from_url(redis_url)
    store = RedisStore(aioredis.Redis.from_url(redis_url))
    try:
        digest = hashlib.sha256(b"guesses:192.0.2.1").hexdigest()[:32]
        name = f"repro:g:{{{digest}}}"
        await client.zadd(name, {f"forged{n}": 1000.0 + n / 1000 for n in range(50_000)})
        times = await store.attempts("guesses:192.0.2.1", 1010.0, 60.0, 10, add=False)
        assert times == tuple(1000.0 + n / 1000 for n in range(49_990, 50_000))
    finally:
        await store.close()
        await client.aclose()


@pytest.mark.parametrize("forged", [b"\x01", b"\x01short", b"\x02\x01\x00\x00\x00\x09abc", b"x"])
async def test_a_sealed_value_too_short_to_open_reads_as_absent(
    redis_url: str, forged: bytes
) -> None:
    """With --encryption-key, a value shorter than its nonce made the cipher raise, as no
    other forgery did: a failing store to the breaker, which opened for every key."""
    client = aioredis.Redis.from_url(redis_url)
    sealed = EncryptedStore(RedisStore(aioredis.Redis.from_url(redis_url)), [bytes(32)])
    store = GuardedStore(sealed, timeout=5, threshold=3)
    try:
        await client.flushdb()
        await store.put(Write("k", "fp_a", b"the answer", 0))
        await client.hset("repro:e:{k}", "fp_b", forged)
        for _ in range(4):
            assert (await store.lookup("k", None))[1] == {"fp_a": b"the answer"}
        assert not store.is_open
    finally:
        await store.close()
        await client.aclose()


async def test_names_that_are_no_text_stop_no_listing(
    stores: tuple[GuardedStore, aioredis.Redis],
) -> None:
    """A key or model name that is not UTF-8 is no name the proxy writes: one of them must not
    fail every export or fingerprint report."""
    store, client = stores
    await client.hset(b"repro:e:{\xff}", mapping={b"fp_a": b"x"})
    await client.sadd("repro:models", b"\xff\xfe")
    exported = sorted([(key, fp) async for key, fp, _ in store.entries(Selector())])
    assert exported == [("forged", "fp_a"), ("good", "fp_a")]
    assert sorted(await store.all_fingerprints()) == ["m", "n"]
    assert await store.purge(Selector(), dry_run=False) == 3


async def test_a_key_of_another_type_among_the_entries_stops_no_listing(
    stores: tuple[GuardedStore, aioredis.Redis],
) -> None:
    store, client = stores
    await client.set("repro:e:{a-string}", b"not a hash")
    exported = sorted([(key, fp) async for key, fp, _ in store.entries(Selector())])
    assert exported == [("forged", "fp_a"), ("good", "fp_a")]
    assert (await store.usage()).entries == 2
    assert await store.purge(Selector(), dry_run=False) == 2


async def test_a_rotation_no_script_wrote_is_left_out(
    stores: tuple[GuardedStore, aioredis.Redis],
) -> None:
    store, client = stores
    await store.record(Write("forged", "fp_b", b"moved", 0, model="n", now=5.0))
    name = (await model_key(client, b"n")).replace(b"repro:fp:", b"repro:rot:")
    forged = [b"not json", b'{"old": 1, "new": "fp_b", "at": 1, "back": 0}', b"\xff", b"[]"]
    forged += [b'{"old": "a\\nb", "new": "fp_b", "at": 1, "back": 0}']
    forged += [b'{"old": "fp_a", "new": "fp_b", "at": 1e300, "back": 0}']
    await client.lpush(name, *forged)
    rotations = await store.rotations("n")
    assert [(r.old, r.new, r.at, r.back) for r in rotations] == [("fp_a", "fp_b", 5.0, False)]


@pytest.mark.parametrize("moves", [True, False])
async def test_a_forged_current_is_never_reported_as_the_previous_fingerprint(
    stores: tuple[GuardedStore, aioredis.Redis], moves: bool
) -> None:
    store, client = stores
    await client.hset(await model_key(client, b"n"), "current", b"x\n" * 50_000)
    seen = await store.observe_fingerprint("n", "fp_a", 9.0, 1, moves)
    assert (seen.previous, seen.current) == (None, "fp_a")


class Counting(StoreWrapper):
    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.asked = 0

    async def secret(self, candidate: bytes) -> bytes:
        self.asked += 1
        return await self.inner.secret(candidate)


async def test_a_secret_the_store_cannot_give_is_not_asked_for_on_every_request(
    redis_url: str,
) -> None:
    """A key of another type at the secret's refuses each read, and the circuit stays closed
    (the store answered): asked on every request, it would cost each a round trip, forever."""
    client = aioredis.Redis.from_url(redis_url)
    store = Counting(RedisStore(aioredis.Redis.from_url(redis_url)))
    try:
        await client.delete("repro:secret")
        await client.hset("repro:secret", mapping={"a": "b"})
        clock = [100.0]
        secret = Secret(store, None, clock=lambda: clock[0])
        for _ in range(50):
            await secret.settle()
        assert secret.provisional and store.asked == 1
        clock[0] += 1.0
        await secret.settle()
        assert store.asked == 2
        await client.delete("repro:secret")
        clock[0] += 1.0
        await secret.settle()
        assert not secret.provisional and store.asked == 3
    finally:
        await store.close()
        await client.aclose()


@pytest.mark.parametrize("left", ["models", "model", "history"])
async def test_a_key_of_another_type_where_state_is_kept_is_written_over(
    stores: tuple[GuardedStore, aioredis.Redis], left: str
) -> None:
    """The models index is named by every answer's write: left as a string, every write was
    refused, so nothing was stored again while the process looked ready. A model's hash or
    its rotation list of another type refused every answer of the model."""
    store, client = stores
    model = await model_key(client, b"n")
    name = {"models": b"repro:models", "model": model}
    name["history"] = layout.history_key(model.decode()).encode()
    await client.delete(name[left])
    await client.set(name[left], b"left by another writer")
    for index in range(3):
        await store.record(Write(f"new{index}", "fp_b", b"stored", 0, model="n"))
        assert (await store.lookup(f"new{index}", "n"))[1] == {"fp_b": b"stored"}
    state, _ = await store.lookup("new0", "n")
    assert state is not None and state.current == "fp_b"
    assert await client.smembers("repro:models") >= {b"n"}
    assert await client.type(model) == b"hash"
    assert not store.is_open
    await client.set("repro:models", b"again")
    await store.observe_fingerprint("n", "fp_c", 1.0)
    assert await client.smembers("repro:models") == {b"n"}
