"""redis-py at the Redis store's boundary: its errors become StoreError, without a value in the
text, and so do values it cannot read; a refused fill lock counts as not taken."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import ClusterError, RedisClusterException, RedisError, ResponseError

from proxy.core.tlsreason import tls_reason
from proxy.store.base import StoreError, StoreRefused, StoreTimeout

FAILURES = (RedisError, RedisClusterException, OSError)
"""What redis-py raises; OSError covers builtin (and asyncio) TimeoutError too."""
_UNREADABLE = (ValueError, KeyError)
"""What reading a value another writer left raises (not UTF-8, not JSON, a record without its
fields): the store answered, so it is a refusal of that one call, never a failing store, which
would open the circuit for every key because of one. Not TypeError nor AttributeError, which
redis-py raises on a connection in a broken state: a failure."""


class mapped:
    """The one boundary where redis-py's errors become StoreError; values never reach the text.
    A class, not @contextmanager: it wraps every store call, and a generator costs more."""

    __slots__ = ("operation",)

    def __init__(self, operation: str) -> None:
        self.operation = operation

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if exc is None:
            return
        if isinstance(exc, TimeoutError):  # the deadline (redis-py's own timeouts are RedisError)
            raise StoreTimeout(f"redis {self.operation} timed out") from exc
        if isinstance(exc, ResponseError):  # an error reply: OOM, say; the server is up
            raise StoreRefused(f"redis {self.operation} refused: {reason(exc)}") from exc
        if isinstance(exc, ClusterError):  # redirected or told to retry past redis-py's bound
            raise StoreRefused(f"redis {self.operation} refused: a slot on the move") from exc
        if isinstance(exc, FAILURES):
            tls = tls_reason(exc.__cause__ or exc.__context__)
            what = type(exc).__name__ + (f" (TLS: {tls})" if tls else "")
            raise StoreError(f"redis {self.operation} failed: {what}") from exc
        if isinstance(exc, _UNREADABLE):  # an answer no version of the proxy writes
            what = type(exc).__name__
            raise StoreRefused(
                f"redis {self.operation} answered what it cannot read: {what}"
            ) from exc


async def taken(lock: asyncio.Future[Any]) -> bool:
    """A fill lock's reply: refused (an error reply, such as OOM) counts as not taken."""
    try:
        return bool(await lock)
    except ResponseError:
        return False


def reason(exc: ResponseError) -> str:
    """An error reply's kind: redis-py's class for it (OutOfMemoryError, which drops the code
    from the text), else its code (OOM, READONLY); never the rest, which may quote values."""
    if type(exc) is not ResponseError:
        return type(exc).__name__
    code = str(exc).split(" ", 1)[0]
    return code if code.isupper() else "ResponseError"  # a script's errors have no code
