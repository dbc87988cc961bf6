"""The services one proxy process shares between requests, kept in the app, not in globals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from proxy.coalesce import Coalescer
from proxy.config import Settings
from proxy.fingerprints import FingerprintTracker
from proxy.keycheck import KeyChecker
from proxy.metrics import Metrics
from proxy.probe import Prober
from proxy.secret import Secret
from proxy.store.base import Store
from proxy.upstream import Upstream
from proxy.verify import Verifier


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    store: Store
    upstream: Upstream
    metrics: Metrics
    fingerprints: FingerprintTracker
    coalescer: Coalescer
    keys: KeyChecker
    prober: Prober
    verifier: Verifier
    secret: Secret
    clock: Callable[[], float]


SERVICES = web.AppKey("services", Services)
