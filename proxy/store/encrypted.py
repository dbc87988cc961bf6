"""Stored answers encrypted at rest with AES-256-GCM (the `cryptography` package).

Answers can hold whatever the prompts made the model say, and Redis is often shared or backed
up in the clear. Each value gets a fresh 96-bit nonce, and its slot (cache key and fingerprint)
is authenticated as associated data, so a value copied under another key fails to decrypt. Keys
rotate: the first key encrypts, every key given decrypts; a value no key opens reads as absent.
Fingerprint state and locks stay in the clear: they hold no content.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.core.fingerprints import ModelFingerprints, Observation
from proxy.store.base import Selector, Store, Write
from proxy.store.wrapper import StoreWrapper

_VERSION = b"\x01"
_NONCE_BYTES = 12


def parse_keys(text: str) -> list[bytes]:
    """Comma-separated base64 keys of 32 bytes each; the first one encrypts."""
    keys = []
    for part in text.split(","):
        try:
            key = base64.b64decode(part.strip(), validate=True)
        except binascii.Error:
            raise ValueError("each key must be base64 (e.g. `openssl rand -base64 32`)") from None
        if len(key) != 32:
            raise ValueError("each key must decode to 32 bytes (AES-256)")
        keys.append(key)
    return keys


class EncryptedStore(StoreWrapper):
    def __init__(self, inner: Store, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        super().__init__(inner)
        self._ciphers = [AESGCM(key) for key in keys]

    def seal(self, key: str, fingerprint: str, value: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[0].encrypt(nonce, value, _slot(key, fingerprint))
        return _VERSION + nonce + sealed

    def open(self, key: str, fingerprint: str, blob: bytes) -> bytes | None:
        if not blob.startswith(_VERSION):
            return None
        nonce, sealed = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, sealed, _slot(key, fingerprint))
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
        return replace(write, value=self.seal(write.key, write.fingerprint, write.value))

    async def entries(self, selector: Selector) -> AsyncIterator[tuple[str, str, bytes]]:
        async for key, fingerprint, blob in self.inner.entries(selector):
            value = self.open(key, fingerprint, blob)
            if value is not None:
                yield key, fingerprint, value


def _slot(key: str, fingerprint: str) -> bytes:
    return f"{key}\x00{fingerprint}".encode()
