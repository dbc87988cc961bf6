"""Online guessing of the admin token: each client network gets a few wrong guesses a minute.

A wrong bearer on an /admin route, or a wrong token posted to the operators' login form, counts
against the address it came from (an IPv6 address by its /64, which one host holds whole).
Past `ALLOWED` within `WINDOW` seconds, every attempt from there answers 429, the right token
included (else the limit would only slow the search, not stop it), until the oldest wrong guess
leaves the window.

Counted twice: in this process (at most `ADDRESSES` remembered, the stalest forgotten first),
and in the store, which every worker and replica sharing a Redis shares, so that spreading the
guesses over them gains nothing. The stricter count decides; a store that fails leaves the
process's own. Tries still being judged count too (`attempt`): concurrent tries would all pass
a check made before any of them is counted wrong, so a process hears at most `ALLOWED` at once
per network (and replicas sharing a store at most that many each, before the store's count
catches up). With `memory://` each process's store is its own: N workers allow N times the
guesses. Behind a reverse proxy every caller shares its address, so a guesser there locks the
operators out for a minute at a time, never lets them in.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Sequence

from proxy.errors import TooManyGuesses
from proxy.store.base import Store, StoreError

log = logging.getLogger("proxy.admin")

ALLOWED = 10
WINDOW = 60.0
ADDRESSES = 4096


class Guesses:
    def __init__(self) -> None:
        self._wrong: OrderedDict[str, deque[float]] = OrderedDict()
        self._trying: dict[str, int] = {}  # tries being judged, per network: as many as requests

    def __len__(self) -> int:
        return len(self._wrong)

    async def check(self, store: Store | None, address: str | None, now: float) -> None:
        """Refuse an attempt from an address that has used up its wrong guesses."""
        network = _network(address)
        trying = self._trying.get(network, 0)
        _refuse(_refusal(self._wrong.get(network, ()), now, trying))
        _refuse(_refusal(await _shared(store, network, now, add=False), now, trying))

    @contextlib.asynccontextmanager
    async def attempt(
        self, store: Store | None, address: str | None, now: float
    ) -> AsyncIterator[None]:
        """One try of a token, refused (429) past the allowance; counted among the tries in
        flight from its network until it is judged (`failed`, or the block's end)."""
        network = _network(address)
        others = self._trying.get(network, 0)
        _refuse(_refusal(self._wrong.get(network, ()), now, others))
        self._trying[network] = others + 1  # before the store's count is awaited
        try:
            _refuse(_refusal(await _shared(store, network, now, add=False), now, others))
            yield
        finally:
            left = self._trying[network] - 1
            if left:
                self._trying[network] = left
            else:
                del self._trying[network]

    async def failed(self, store: Store | None, address: str | None, now: float) -> None:
        network = _network(address)
        times = self._wrong.pop(network, None) or deque(maxlen=ALLOWED)
        times.append(now)
        self._wrong[network] = times
        while len(self._wrong) > ADDRESSES:
            self._wrong.popitem(last=False)
        shared = await _shared(store, network, now, add=True)
        if _refusal(times, now) is not None or _refusal(shared, now) is not None:
            log.warning("admin token guessed wrong too often: refusing", extra={"from": network})


def _refusal(times: Sequence[float], now: float, trying: int = 0) -> int | None:
    """Seconds until the next attempt is heard, or None when it is heard now (pure), with
    `trying` others still being judged. A time more than a window ahead is no replica's clock
    (the shared count is the store's to say): it counts for nothing, so that the wait stays
    within two windows. Tries in flight end within a request's time: a second, then see."""
    recent = [moment for moment in times if -WINDOW < now - moment < WINDOW]
    if len(recent) + trying < ALLOWED:
        return None
    if len(recent) < ALLOWED:
        return 1
    return max(1, math.ceil(WINDOW - (now - recent[-ALLOWED])))


def _refuse(wait: int | None) -> None:
    if wait is not None:
        raise TooManyGuesses(
            "Too many wrong admin tokens from this address: try again later.",
            headers={"Retry-After": str(wait)},
        )


async def _shared(store: Store | None, network: str, now: float, add: bool) -> Sequence[float]:
    """The guesses every process sharing the store counted; none when it fails, or when the
    store is this process's own (its count is the one kept here)."""
    if store is None or not store.shared:
        return ()
    try:
        return await store.attempts("guesses:" + network, now, WINDOW, ALLOWED, add)
    except StoreError:
        return ()


def _network(address: str | None) -> str:
    try:
        parsed = ipaddress.ip_address(address or "")
    except ValueError:
        return address or ""
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)  # an IPv4 caller of a dual-stack listener, not ::/64
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)
