"""Encryption at rest: the store contract still holds, and what reaches the backend is sealed."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.config import SettingError, load
from proxy.core.codec import HEAD_SIZE, Codec, raw_size
from proxy.core.entry import Entry
from proxy.store import open_store
from proxy.store.base import Store, Write
from proxy.store.encrypted import EncryptedStore, key_id, parse_keys
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from tests.store.test_store_contract import Elapse, FakeClock, StoreContract

KEY_A, KEY_B = os.urandom(32), os.urandom(32)


class TestEncryptedMemoryStore(StoreContract):
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def store(self, clock: FakeClock) -> Store:
        return EncryptedStore(MemoryStore(clock=clock), [KEY_A])

    @pytest.fixture
    def elapse(self, clock: FakeClock) -> Elapse:
        async def elapse(seconds: float) -> None:
            clock.now += seconds

        return elapse


async def test_the_backend_never_sees_the_plaintext() -> None:
    inner = MemoryStore()
    store = EncryptedStore(inner, [KEY_A])
    secret = b'{"content": "the launch code is 0000"}'
    await store.put(Write("k", "fp", secret, 0))
    raw = await inner.get("k", None)
    assert b"launch code" not in raw["fp"]
    assert await store.get("k", None) == {"fp": secret}


async def test_the_same_value_seals_differently_each_time() -> None:
    store = EncryptedStore(MemoryStore(), [KEY_A])
    assert store.seal("k", "fp", b"v") != store.seal("k", "fp", b"v")


async def test_a_value_moved_to_another_slot_does_not_open() -> None:
    inner = MemoryStore()
    store = EncryptedStore(inner, [KEY_A])
    await store.put(Write("k1", "fp", b"answer for k1", 0))
    moved = (await inner.get("k1", ["fp"]))["fp"]
    await inner.put(Write("k2", "fp", moved, 0))
    await inner.put(Write("k1", "fp_other", moved, 0))
    assert await store.get("k2", None) == {}
    assert await store.get("k1", ["fp_other"]) == {}


async def test_an_entry_is_compressed_before_it_is_sealed_and_keeps_its_head_in_the_clear() -> None:
    inner = MemoryStore()
    store = EncryptedStore(inner, [KEY_A])
    entry = Entry(
        b'{"content": "the launch code is 0000"}' * 20, "application/json", "fp", 1.0, "m"
    )
    packed = Codec(level=1).pack(entry)
    await store.put(Write("k", "fp", packed, 0))
    sealed = (await inner.get("k", None))["fp"]
    assert b"launch code" not in sealed
    assert sealed[:HEAD_SIZE] == packed[:HEAD_SIZE]
    assert len(sealed) == len(packed) + 12 + 16  # sealed after compression: as small as it
    assert raw_size(sealed) == raw_size(packed)
    assert Codec().unpack((await store.get("k", None))["fp"]) == entry


async def test_a_tampered_head_does_not_open() -> None:
    inner = MemoryStore()
    store = EncryptedStore(inner, [KEY_A])
    packed = Codec(level=1).pack(Entry(b"answer" * 50, "application/json", "fp", 1.0, "m"))
    await store.put(Write("k", "fp", packed, 0))
    sealed = (await inner.get("k", None))["fp"]
    lying = sealed[:2] + (raw_size(sealed) + 1).to_bytes(4, "big") + sealed[HEAD_SIZE:]
    await inner.put(Write("k", "fp", lying, 0))
    assert await store.get("k", None) == {}


async def test_values_sealed_by_the_first_layout_still_open() -> None:
    """The first layout sealed every value whole, behind one version byte, the slot as the
    associated data: values written so before an upgrade stay readable."""
    store = EncryptedStore(MemoryStore(), [KEY_A])
    packed = Codec(level=1).pack(Entry(b"answer" * 50, "application/json", "fp", 1.0, "m"))
    nonce = os.urandom(12)
    first = b"\x01" + nonce + AESGCM(KEY_A).encrypt(nonce, packed, b"k\x00fp")
    assert store.open("k", "fp", first) == packed


async def test_key_rotation_reads_old_values_and_writes_with_the_new_key() -> None:
    inner = MemoryStore()
    await EncryptedStore(inner, [KEY_A]).put(Write("old", "fp", b"old value", 0))
    rotated = EncryptedStore(inner, [KEY_B, KEY_A])
    assert await rotated.get("old", None) == {"fp": b"old value"}
    await rotated.put(Write("new", "fp", b"new value", 0))
    assert await EncryptedStore(inner, [KEY_B]).get("new", None) == {"fp": b"new value"}
    assert await EncryptedStore(inner, [KEY_A]).get("new", None) == {}


async def test_unencrypted_or_foreign_values_read_as_absent() -> None:
    inner = MemoryStore()
    await inner.put(Write("plain", "fp", b"plain bytes", 0))
    assert await EncryptedStore(inner, [KEY_A]).get("plain", None) == {}


def test_keys_are_validated_by_the_setting() -> None:
    good = base64.b64encode(KEY_A).decode()
    assert parse_keys(f"{good}, {base64.b64encode(KEY_B).decode()}") == [KEY_A, KEY_B]
    assert load({"encryption_key": good}, {}).encryption_key == good
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(SettingError) as caught:
            load({"encryption_key": bad}, {})
        assert "--encryption-key" in str(caught.value)
        assert bad not in str(caught.value)
    assert good not in repr(load({"encryption_key": good}, {}))


async def test_the_dictionary_is_sealed_like_the_answers_it_was_trained_on() -> None:
    inner = MemoryStore()
    store = EncryptedStore(inner, [KEY_A])
    dictionary = b"\x37\xa4\x30\xec the prompts the launch code came from"
    assert await store.dictionary(dictionary) == dictionary
    held = await inner.dictionary(None)
    assert held is not None and b"launch code" not in held
    assert await EncryptedStore(inner, [KEY_B, KEY_A]).dictionary(None) == dictionary
    assert await EncryptedStore(inner, [KEY_B]).dictionary(None) is None  # cannot open it


def test_a_key_id_tells_keys_apart_and_says_nothing_of_the_key() -> None:
    first, second = b"k" * 32, b"o" * 32
    assert key_id(first) == key_id(first) != key_id(second)
    assert len(key_id(first)) == 16


async def test_the_store_counts_the_key_ids_it_was_told_and_checks_those_asked(
    redis_url: str,
) -> None:
    store = await open_store(redis_url)
    assert isinstance(store, RedisStore)
    try:
        assert await store.sealers(None, ["a"]) == (0, False)
        assert await store.sealers("a") == (1, False)
        assert await store.sealers("b", ["c", "a"]) == (2, True)
        assert await store.sealers(None, ["c"]) == (2, False)
    finally:
        await store.close()
