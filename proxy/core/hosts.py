"""Which names a request may give in `Host`: the guard against DNS rebinding.

A web page can point a name of its own at 127.0.0.1 once it is loaded, then ask the proxy as a
page of the same origin and read the answers: cached answers in replay mode, /metrics, the
pass-through routes. A browser always names the page's host in `Host`, so answering only the
names the proxy serves ends it, as Jupyter, Vite and webpack-dev-server do on loopback.

- A loopback listener serves `localhost` and the names listed; a listener on another address
  serves any name, unless names are listed: then those and `localhost`. `*` serves any name.
- An address literal (`127.0.0.1`, `10.1.2.3`, `[::1]`) is always accepted: nothing can rebind
  an address, and a page whose origin is one came from that address itself. Kubernetes probes
  and Prometheus ask a pod by its address.
- A listed `.example.com` serves `example.com` and every name under it. Names are compared in
  lower case, without one trailing dot (`localhost.` is `localhost`); ports are not compared (a
  published port may differ from the one the proxy binds).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

ANY = "*"
LOCALHOST = "localhost"
MEMO = 256
"""Distinct Host values whose verdict is remembered: a few make nearly all traffic. A client
sending a new one each time empties the memo every MEMO values, and the few come back at once."""

_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_PORT = re.compile(r"[0-9]{0,5}")


class Verdict(Enum):
    ALLOWED = "allowed"
    REFUSED = "refused"
    INVALID = "invalid"


def is_loopback(address: str) -> bool:
    """Whether a listen address reaches this machine only: `localhost`, 127.0.0.0/8, `::1`
    (an IPv4-mapped 127.x too). Any other name counts as not: what it resolves to is not known
    here."""
    text = address.strip().lower()
    if text.rstrip(".") == LOCALHOST:
        return True
    try:
        ip = ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


@dataclass(frozen=True, slots=True)
class Host:
    """A Host value read: the name in lower case without a trailing dot, or an address."""

    name: str
    address: bool


def read_host(value: str) -> Host | None:
    """`value` as RFC 9110 7.2's `uri-host [":" port]`, or None when it is not one. Names are
    held to ASCII letters, digits, `-`, `_` and dots between labels (what DNS and container
    names use); an IPv6 address must be in brackets, without a zone."""
    if not value.isascii():
        return None
    text = value.lower()
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or not _is_port(rest) or "%" in inside:
            return None
        try:
            return Host(str(ipaddress.IPv6Address(inside)), address=True)
        except ValueError:
            return None
    name, colon, port = text.partition(":")
    if not _is_port(colon + port):
        return None
    name = name.removesuffix(".")
    if not _NAME.fullmatch(name):
        return None
    try:
        return Host(str(ipaddress.IPv4Address(name)), address=True)
    except ValueError:
        return Host(name, address=False)


def _is_port(rest: str) -> bool:
    """Whether what follows the host is nothing, or `:` and at most five digits."""
    return not rest or (rest.startswith(":") and _PORT.fullmatch(rest[1:]) is not None)


def read_allowed(value: str) -> str:
    """One name of the setting, as it is compared: lower case, without a trailing dot; `*`, or
    `.example.com` for a domain and every name under it. Raises ValueError for anything else."""
    text = value.strip().lower()
    if text == ANY:
        return ANY
    domain = text.startswith(".")
    bare = text.removeprefix(".")
    port = bare.partition("]")[2] if bare.startswith("[") else bare.partition(":")[1]
    host = read_host(bare)
    if host is None or port or (domain and host.address):
        raise ValueError(f"{value.strip()!r}: expected a host name or .domain without a port, or *")
    return "." + host.name if domain else host.name


def parse_allowed(text: str) -> tuple[str, ...]:
    """The setting's comma-separated names, each as `read_allowed` reads it."""
    return tuple(dict.fromkeys(read_allowed(part) for part in text.split(",") if part.strip()))


@dataclass(frozen=True, slots=True)
class AllowedHosts:
    """The names served; None serves any."""

    names: frozenset[str] | None
    domains: tuple[str, ...] = ()

    def allows(self, host: Host) -> bool:
        if self.names is None or host.address or host.name in self.names:
            return True
        return any(host.name == d[1:] or host.name.endswith(d) for d in self.domains)


def allowed_hosts(listen: str, listed: Iterable[str]) -> AllowedHosts:
    """The names a proxy listening on `listen` serves, given the names listed as `parse_allowed`
    reads them (see the module's docstring); a listen name of its own is served too."""
    given = set(listed)
    if ANY in given or (not given and not is_loopback(listen)):
        return AllowedHosts(None)
    own = read_host(listen.strip())
    if own is not None and not own.address:
        given.add(own.name)
    names = frozenset({LOCALHOST, *(name for name in given if not name.startswith("."))})
    return AllowedHosts(names, tuple(sorted(name for name in given if name.startswith("."))))


class HostCheck:
    """The verdict on each Host value, remembered (at most MEMO of them)."""

    __slots__ = ("_verdicts", "allowed", "any")

    def __init__(self, allowed: AllowedHosts) -> None:
        self.allowed = allowed
        self.any = allowed.names is None  # nothing to check
        self._verdicts: dict[str, Verdict] = {}

    def verdict(self, value: str) -> Verdict:
        found = self._verdicts.get(value)
        if found is not None:
            return found
        host = read_host(value)
        if host is None:
            found = Verdict.INVALID
        else:
            found = Verdict.ALLOWED if self.allowed.allows(host) else Verdict.REFUSED
        if len(self._verdicts) >= MEMO:
            self._verdicts.clear()
        self._verdicts[value] = found
        return found
