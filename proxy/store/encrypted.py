"""Stored answers encrypted at rest with AES-256-GCM (the `cryptography` package).

Answers can hold whatever the prompts made the model say, and Redis is often shared or backed
up in the clear. Each value gets a fresh 96-bit nonce, and its slot (cache key and fingerprint)
is authenticated as associated data, so a value copied under another key fails to decrypt. Keys
rotate: the first key encrypts, every key given decrypts; a value no key opens reads as absent.
Fingerprint state and locks stay in the clear: they hold no content. So does the head of an
entry (its format, codec and uncompressed size, see proxy.core.codec), authenticated with the
slot, so that the store can count what its answers stand for without a key.

A proxy that encrypts names its key in the store (`key_id`, which reveals nothing of the key):
`import` and `export` can then tell a store that needs a key, and a key that is not the store's,
before they write answers no proxy would read, or read none.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import AsyncIterator, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.core.codec import FORMAT, HEAD_SIZE
from proxy.core.fingerprints import ModelFingerprints, Observation
from proxy.store.base import Selector, Store, Write
from proxy.store.wrapper import StoreWrapper

_VERSION = b"\x01"  # the whole value sealed; the slot is the associated data
_ENTRY = bytes([FORMAT])  # an entry's head in the clear, associated data with the slot
_NONCE_BYTES = 12
_DICTIONARY = "\x00dictionary"  # the dictionary's slot: no cache key starts with a NUL


def parse_keys(text: str) -> list[bytes]:
    """Comma-separated base64 keys of 32 bytes each; the first one encrypts."""
    keys = []
    for part in text.split(","):
        try:
            key = base64.b64decode(part.strip(), validate=True)
        except binascii.Error:
            raise ValueError("each key must be base64 (e.g. `openssl rand -base64 32`)") from None
        if len(key) != 32:
            raise ValueError(
                "each key must decode to 32 bytes (AES-256): base64 of 32 random bytes, as "
                "`openssl rand -base64 32` prints (`-hex 32` is 64 characters, 48 bytes as base64)"
            )
        keys.append(key)
    return keys


def key_id(key: bytes) -> str:
    """A short name of a key, the same in every process: a keyed hash, which tells keys apart
    and says nothing of the key."""
    return hmac.new(key, b"repro-proxy key id", hashlib.sha256).hexdigest()[:16]


class EncryptedStore(StoreWrapper):
    def __init__(self, inner: Store, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        super().__init__(inner)
        self._ciphers = [AESGCM(key) for key in keys]
        self.key_ids = [key_id(key) for key in keys]
        self.unopened = 0
        """Entries `entries` passed over, sealed with no key given: an export says how many."""

    def seal(self, key: str, fingerprint: str, value: bytes) -> bytes:
        head = _head(value)
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[0].encrypt(
            nonce, value[len(head) :], _associated(key, fingerprint, head)
        )
        return (head or _VERSION) + nonce + sealed

    def open(self, key: str, fingerprint: str, blob: bytes) -> bytes | None:
        head = _head(blob)
        if not head and not blob.startswith(_VERSION):
            return None
        start = len(head) or len(_VERSION)
        nonce, sealed = blob[start : start + _NONCE_BYTES], blob[start + _NONCE_BYTES :]
        if len(nonce) != _NONCE_BYTES:  # the cipher raises on a short nonce: another writer's
            return None
        for cipher in self._ciphers:
            try:
                return head + cipher.decrypt(nonce, sealed, _associated(key, fingerprint, head))
            except InvalidTag:
                continue
        return None

    async def get(self, key: str, fingerprints: Sequence[str] | None) -> dict[str, bytes]:
        return self._open_all(key, await self.inner.get(key, fingerprints))

    def _open_all(self, key: str, found: dict[str, bytes]) -> dict[str, bytes]:
        opened = {fp: self.open(key, fp, blob) for fp, blob in found.items()}
        return {fp: value for fp, value in opened.items() if value is not None}

    async def lookup(
        self, key: str, model: str | None
    ) -> tuple[ModelFingerprints | None, dict[str, bytes]]:
        state, found = await self.inner.lookup(key, model)
        return state, self._open_all(key, found)

    async def lookup_or_lock(
        self, key: str, model: str | None, token: str, ttl: float
    ) -> tuple[ModelFingerprints | None, dict[str, bytes], bool]:
        state, found, locked = await self.inner.lookup_or_lock(key, model, token, ttl)
        return state, self._open_all(key, found), locked

    async def put(self, write: Write) -> None:
        await self.inner.put(self._sealed(write))

    async def record(self, write: Write) -> Observation:
        return await self.inner.record(self._sealed(write))

    def _sealed(self, write: Write) -> Write:
        return write._replace(value=self.seal(write.key, write.fingerprint, write.value))

    async def dictionary(self, candidate: bytes | None) -> bytes | None:
        """Sealed like the answers it was trained on: it holds pieces of their text."""
        sealed = None if candidate is None else self.seal(_DICTIONARY, "", candidate)
        stored = await self.inner.dictionary(sealed)
        return None if stored is None else self.open(_DICTIONARY, "", stored)

    async def entries(self, selector: Selector) -> AsyncIterator[tuple[str, str, bytes]]:
        async for key, fingerprint, blob in self.inner.entries(selector):
            value = self.open(key, fingerprint, blob)
            if value is None:
                self.unopened += 1
            else:
                yield key, fingerprint, value


def sealed_dictionary(stored: bytes | None) -> bool:
    """Whether the store's dictionary was sealed (a trained one starts with zstd's magic, 0x37)."""
    return stored is not None and stored.startswith(_VERSION)


def _head(value: bytes) -> bytes:
    """An entry's head, kept in the clear; empty for any other value (sealed whole)."""
    return value[:HEAD_SIZE] if value[:1] == _ENTRY and len(value) >= HEAD_SIZE else b""


def _associated(key: str, fingerprint: str, head: bytes) -> bytes:
    """The slot (a value copied under another key fails to open) and the head in the clear."""
    return f"{key}\x00{fingerprint}".encode() + head
