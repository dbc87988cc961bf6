"""A circuit breaker in front of the store, so that a cache never makes a request fail or hang.

Every call gets a deadline: its own timer, or the store's (see `bounded`). A call that times out
opens the circuit at once (a frozen store would otherwise cost every request the full timeout);
`threshold` fast failures in a row open it too. While open, calls fail immediately, and after
`cooldown` seconds one probe call is let through: success closes the circuit, failure keeps it open
for another cooldown. State changes are logged once each. A refusal (StoreRefused: Redis out of
memory) is an answer, not a failure: the circuit stays closed, and reads go on serving HITs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from proxy.core.fingerprints import ModelFingerprints, Observation, Rotation
from proxy.store.base import (
    Selector,
    Store,
    StoreError,
    StoreRefused,
    StoreTimeout,
    Usage,
    Write,
)

log = logging.getLogger("proxy.store")

T = TypeVar("T")


class CircuitOpen(StoreError):
    """The store is not being asked right now, because it failed recently."""


class GuardedStore:
    def __init__(
        self,
        inner: Store,
        *,
        timeout: float,
        threshold: int = 3,
        cooldown: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        bounded: bool = False,
    ) -> None:
        """`bounded`: the inner store already fails its calls with StoreTimeout after `timeout`
        (RedisStore with that deadline, one watchdog per batch), so no timer per call here."""
        self.inner = inner
        self.shared = inner.shared
        self._timeout = timeout
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._bounded = bounded
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False
        self.last_error = ""

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    async def _admin(self, op: str, work: Awaitable[T]) -> T:
        """Operator calls run as long as they need; their failures still become StoreError."""
        try:
            return await work
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{op} failed: {type(exc).__name__}") from exc

    async def _call(self, op: str, run: Callable[[], Awaitable[T]]) -> T:
        probe = self._admit(op)
        try:
            if self._bounded:
                result = await run()
            else:
                async with asyncio.timeout(self._timeout):
                    result = await run()
        except StoreRefused:  # the store answered: alive, whatever it refused
            self._succeed()
            raise
        except (TimeoutError, StoreTimeout):
            self._fail(f"{op} timed out after {self._timeout:g}s", at_once=True)
            raise StoreError(self.last_error) from None
        except StoreError as exc:
            self._fail(str(exc), at_once=probe)
            raise
        except Exception as exc:  # a client library's own bug must not fail the request either
            self._fail(f"{op} failed: {type(exc).__name__}", at_once=probe)
            raise StoreError(self.last_error) from exc
        finally:
            if probe:
                self._probing = False
        self._succeed()
        return result

    def _admit(self, op: str) -> bool:
        """Let the call through, as a probe when the cooldown is over; else fail fast."""
        if self._open_until is None:
            return False
        if self._clock() >= self._open_until and not self._probing:
            self._probing = True
            return True
        raise CircuitOpen(f"store skipped for {op}: circuit open after: {self.last_error}")

    def _fail(self, error: str, *, at_once: bool) -> None:
        self.last_error = error
        self._failures += 1
        if at_once or self._failures >= self._threshold:
            if self._open_until is None:
                log.error("store circuit opened", extra={"error": error})
            self._open_until = self._clock() + self._cooldown

    def _succeed(self) -> None:
        self._failures = 0
        if self._open_until is not None:
            log.warning("store circuit closed: the store answers again")
            self._open_until = None

    async def get(self, key: str, fingerprints: Sequence[str] | None) -> dict[str, bytes]:
        return await self._call("get", lambda: self.inner.get(key, fingerprints))

    async def lookup(
        self, key: str, model: str | None
    ) -> tuple[ModelFingerprints | None, dict[str, bytes]]:
        return await self._call("get", lambda: self.inner.lookup(key, model))

    async def lookup_or_lock(
        self, key: str, model: str | None, token: str, ttl: float
    ) -> tuple[ModelFingerprints | None, dict[str, bytes], bool]:
        return await self._call("get", lambda: self.inner.lookup_or_lock(key, model, token, ttl))

    async def put(self, write: Write) -> None:
        await self._call("put", lambda: self.inner.put(write))

    async def record(self, write: Write) -> Observation:
        return await self._call("record", lambda: self.inner.record(write))

    async def purge(self, selector: Selector, dry_run: bool) -> int:
        """Not under the call deadline: a purge scans the whole store, in batches."""
        return await self._admin("purge", self.inner.purge(selector, dry_run))

    def entries(self, selector: Selector) -> AsyncIterator[tuple[str, str, bytes]]:
        return self.inner.entries(selector)

    async def usage(self) -> Usage:
        return await self._admin("usage", self.inner.usage())

    async def delete(self, key: str) -> None:
        await self._call("delete", lambda: self.inner.delete(key))

    async def observe_fingerprint(
        self, model: str, fingerprint: str, now: float, count: int = 1, moves: bool = True
    ) -> Observation:
        return await self._call(
            "fingerprint",
            lambda: self.inner.observe_fingerprint(model, fingerprint, now, count, moves),
        )

    async def fingerprints(self, model: str) -> ModelFingerprints | None:
        return await self._call("fingerprint", lambda: self.inner.fingerprints(model))

    async def all_fingerprints(self) -> dict[str, ModelFingerprints]:
        return await self._call("fingerprint", self.inner.all_fingerprints)

    async def rotations(self, model: str) -> tuple[Rotation, ...]:
        return await self._admin("rotations", self.inner.rotations(model))

    async def secret(self, candidate: bytes) -> bytes:
        return await self._call("secret", lambda: self.inner.secret(candidate))

    async def dictionary(self, candidate: bytes | None) -> bytes | None:
        """Asked in the background, never on a request's path: it does not move the breaker."""
        return await self._admin("dictionary", self.inner.dictionary(candidate))

    async def lock(self, key: str, token: str, ttl: float) -> bool:
        return await self._call("lock", lambda: self.inner.lock(key, token, ttl))

    async def unlock(self, key: str, token: str) -> None:
        await self._call("lock", lambda: self.inner.unlock(key, token))

    async def locked(self, key: str) -> bool:
        return await self._call("lock", lambda: self.inner.locked(key))

    async def attempts(
        self, name: str, now: float, window: float, keep: int, add: bool
    ) -> tuple[float, ...]:
        return await self._call("admin", lambda: self.inner.attempts(name, now, window, keep, add))

    async def mark(self, name: str, ttl: float) -> None:
        await self._call("admin", lambda: self.inner.mark(name, ttl))

    async def marked(self, name: str) -> bool:
        return await self._call("admin", lambda: self.inner.marked(name))

    async def ping(self) -> None:
        """Readiness asks the store itself, open circuit or not; an answer closes the circuit."""
        try:
            async with asyncio.timeout(self._timeout):
                await self.inner.ping()
        except TimeoutError:
            raise StoreTimeout(f"store did not answer a ping within {self._timeout:g}s") from None
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"ping failed: {type(exc).__name__}") from exc
        self._succeed()

    async def close(self) -> None:
        await self.inner.close()
