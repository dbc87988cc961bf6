"""Online guessing of the admin token: each client network gets a few wrong guesses a minute.

A wrong bearer on an /admin route, or a wrong token posted to the operators' login form, counts
against the address it came from (an IPv6 address by its /64, which one host holds whole).
Past `ALLOWED` within `WINDOW` seconds, every attempt from there answers 429, the right token
included (else the limit would only slow the search, not stop it), until the oldest wrong guess
leaves the window. Per process, and bounded: at most `ADDRESSES` remembered, the stalest
forgotten first. Behind a reverse proxy every caller shares its address, so a guesser there
locks the operators out for a minute at a time, never lets them in.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections import OrderedDict, deque

from proxy.errors import TooManyGuesses

log = logging.getLogger("proxy.admin")

ALLOWED = 10
WINDOW = 60.0
ADDRESSES = 4096


class Guesses:
    def __init__(self) -> None:
        self._wrong: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._wrong)

    def check(self, address: str | None, now: float) -> None:
        """Refuse an attempt from an address that has used up its wrong guesses."""
        times = self._wrong.get(_network(address))
        if times is None or len(times) < ALLOWED or now - times[0] >= WINDOW:
            return
        wait = math.ceil(WINDOW - (now - times[0]))
        raise TooManyGuesses(
            "Too many wrong admin tokens from this address: try again later.",
            headers={"Retry-After": str(max(1, wait))},
        )

    def failed(self, address: str | None, now: float) -> None:
        network = _network(address)
        times = self._wrong.pop(network, None) or deque(maxlen=ALLOWED)
        times.append(now)
        self._wrong[network] = times
        if len(times) == ALLOWED and now - times[0] < WINDOW:
            log.warning("admin token guessed wrong too often: refusing", extra={"from": network})
        while len(self._wrong) > ADDRESSES:
            self._wrong.popitem(last=False)


def _network(address: str | None) -> str:
    try:
        parsed = ipaddress.ip_address(address or "")
    except ValueError:
        return address or ""
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)
