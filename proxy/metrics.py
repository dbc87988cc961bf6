"""The metric families of the contract, registered on an injected registry.

Label values stay bounded: routes are the fixed cacheable paths or `/v1/*`, and model names are
taken as clients send them only up to a cap, after which they are counted as `other`, so a client
inventing model names cannot grow the series without limit; so are each model's fingerprints,
which the upstream names. Only served requests (a HIT, or an
upstream 2xx) make a model label, so refused callers cannot use up the cap (see `of`).

What every request counts goes into plain numbers (see `proxy.tallies`), which a collector of
their own shows when the metrics are read; with several workers, each count goes to the shared
files at once instead (see `Metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from proxy.core import routes
from proxy.tallies import CounterFamily, Counts, HistogramFamily, Observes, Tallies

MAX_MODELS = 200
MAX_ROUTED = 50
"""Label values for routed lineages (`routes.routed`: a model on a request that keyed headers or
query parameters route), apart from MAX_MODELS: a routing is the client's to invent with any
header value an upstream ignores, and must not use up the slots of models' labels."""
MAX_FINGERPRINTS = 16
"""Fingerprint label values per model label: they are the upstream's to name, and a real model
rotates a few times a year, while a hostile upstream could name a new one per answer."""
OTHER = "other"

KNOWN_STATUSES = frozenset(HTTPStatus)


def status_label(status: int) -> str:
    """An upstream status as a label: itself when HTTP names it, else its class (`5xx`), or
    `other` beyond 599. The status is the upstream's to choose: a hostile one answering each
    request with another number would otherwise grow the series without end."""
    if status in KNOWN_STATUSES:
        return str(status)
    return f"{status // 100}xx" if 100 <= status <= 599 else OTHER


_PROXY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
_DISTANCE_BUCKETS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
_SESSION_BUCKETS = (1, 10, 30, 60, 300, 600, 1800, 3600, 7200, 14400)
"""A WebSocket session's length: a realtime conversation lasts seconds to hours."""
_UPSTREAM_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


@dataclass(frozen=True, slots=True)
class ModelCounters:
    """One model's counters, prepared once: `.labels()` per request costs a lock and a dict
    lookup on every hit."""

    hits: Counts
    misses: Counts
    seed_injected: Counts
    prompt_saved: Counts
    completion_saved: Counts


def _register_runtime(registry: CollectorRegistry) -> None:
    """process_* (CPU, memory, descriptors), python_info and python_gc_*, as every exporter
    shows them. One process only: with several workers each scrape reaches one of them, and its
    own figures would pass for the whole proxy's, so only python_info is shown then."""
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)


class Metrics:
    """Every family of the contract. What each request counts is tallied in process (`Tallies`)
    when one process serves; with several workers it goes to prometheus-client's own metrics,
    whose values the shared files hold, since another worker may serve the next scrape."""

    def __init__(self, registry: CollectorRegistry, multiprocess_dir: str | None = None) -> None:
        self.registry = registry
        self._multiprocess_dir = multiprocess_dir
        self._models: set[str] = set()
        self._routed = 0  # of `_models`
        self._fingerprints: dict[str, str] = {}
        self._fingerprint_labels: dict[str, set[str]] = {}
        self._alternating: dict[str, bool] = {}
        self._served: dict[tuple[str, str], tuple[Counts, Observes]] = {}
        self._upstream: dict[tuple[str, int], Observes] = {}
        self._per_model: dict[str, ModelCounters] = {}
        tallies = Tallies() if multiprocess_dir is None else None
        self.requests = self._counter(
            tallies, "repro_requests_total", "Requests by route and cache outcome", "route", "cache"
        )
        self.hits = self._counter(
            tallies, "repro_cache_hits_total", "Answers served from the cache", "model"
        )
        self.misses = self._counter(
            tallies, "repro_cache_misses_total", "Lookups that found nothing servable", "model"
        )
        self.seed_injected = self._counter(
            tallies, "repro_seed_injected_total", "Requests that got the default seed", "model"
        )
        self.tokens_saved = self._counter(
            tallies,
            "repro_tokens_saved_total",
            "Tokens answered from the cache instead of the upstream",
            "model",
            "type",
        )
        self.request_duration = self._histogram(
            tallies,
            "repro_request_duration_seconds",
            "Time to answer a client, by route and cache outcome",
            ("route", "cache"),
            _PROXY_BUCKETS,
        )
        self.upstream_duration = self._histogram(
            tallies,
            "repro_upstream_duration_seconds",
            "Time until the upstream's response headers",
            ("route", "status"),
            _UPSTREAM_BUCKETS,
        )
        if tallies is not None:
            registry.register(tallies)
            _register_runtime(registry)
        self.fingerprint_changes = Counter(
            "repro_fingerprint_changes_total",
            "Changes of a model's current system_fingerprint, to a new one or back",
            ["model"],
            registry=registry,
        )
        self.fingerprint_flaps = Counter(
            "repro_fingerprint_flaps_total",
            "Changes of a model's current system_fingerprint back to one it answered with before",
            ["model"],
            registry=registry,
        )
        self.alternation = Gauge(
            "repro_fingerprint_alternating",
            "1 while a model's recent fingerprints are served as one generation (flapping)",
            ["model"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.fingerprint_info = Gauge(
            "repro_fingerprint_info",
            "1 for the current fingerprint of a model, 0 for older ones",
            ["model", "fingerprint"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.verify = Counter(
            "repro_verify_total",
            "HITs re-asked upstream (--verify-rate), by how the fresh answer compared",
            ["model", "result"],
            registry=registry,
        )
        self.verify_distance = Histogram(
            "repro_verify_distance",
            "Normalized edit distance between a stored answer and a fresh one, same fingerprint",
            ["model", "fingerprint"],
            buckets=_DISTANCE_BUCKETS,
            registry=registry,
        )
        self.compression = Gauge(
            "repro_store_compression_ratio",
            "Bytes of the answers this process stored over the bytes they stand for uncompressed",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.store_errors = Counter(
            "repro_store_errors_total",
            "Store operations that failed (the proxy failed open)",
            ["op"],
            registry=registry,
        )
        self.websockets_open = Gauge(
            "repro_websockets_open",
            "WebSocket sessions relayed to the upstream now",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.websocket_sessions = Histogram(
            "repro_websocket_session_seconds",
            "How long each relayed WebSocket session lasted, from the handshake to its close",
            buckets=_SESSION_BUCKETS,
            registry=registry,
        )

    def _counter(
        self, tallies: Tallies | None, name: str, documentation: str, *labelnames: str
    ) -> CounterFamily:
        if tallies is None:
            return Counter(name, documentation, labelnames, registry=self.registry)
        return tallies.counter(name, documentation, labelnames)

    def _histogram(
        self,
        tallies: Tallies | None,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...],
        buckets: tuple[float, ...],
    ) -> HistogramFamily:
        if tallies is None:
            return Histogram(
                name, documentation, labelnames, buckets=buckets, registry=self.registry
            )
        return tallies.histogram(name, documentation, labelnames, buckets)

    def served(self, route: str, cache: str, took: float) -> None:
        """Count one answered request; the labelled children are looked up once per pair."""
        pair = (route, cache)
        children = self._served.get(pair)
        if children is None:
            children = self._served[pair] = (
                self.requests.labels(route, cache),
                self.request_duration.labels(route, cache),
            )
        children[0].inc()
        children[1].observe(took)

    def upstream_answered(self, route: str, status: int, took: float) -> None:
        """Time one upstream answer to its headers; a child per (route, status), as `served`."""
        child = self._upstream.get((route, status))
        if child is None:
            child = self._upstream[route, status] = self.upstream_duration.labels(
                route, status_label(status)
            )
        child.observe(took)

    def websocket_opened(self) -> None:
        self.websockets_open.inc()

    def websocket_closed(self, lasted: float) -> None:
        """A session's length, kept apart from repro_request_duration_seconds: there the
        handshake is what a WebSocket request took, or minutes of talk would read as latency."""
        self.websockets_open.dec()
        self.websocket_sessions.observe(lasted)

    def exposition(self) -> bytes:
        """The text format: this process's metrics, or every worker's when there are several."""
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
        merged.register(PLATFORM_COLLECTOR)
        return generate_latest(merged)

    def hit_counts(self) -> tuple[int, int]:
        """Hits and misses this process has counted, over every model."""
        return _total(self.hits), _total(self.misses)

    def tokens_saved_total(self) -> int:
        """Tokens (prompt and completion) this process answered from the cache."""
        return _total(self.tokens_saved)

    def of(self, model: str, served: bool = True) -> ModelCounters:
        """The counters of `model` (or of `other` past the cap). A request that was not served
        (refused, failed) makes no label: it counts under its model's label only if that exists
        already, else under `other`, so that callers the upstream refuses, or a dead upstream,
        cannot use up the label slots with names of their own."""
        found = self._per_model.get(model)
        if found is None:
            label = self.model(model) if served else self._known(model)
            found = self._per_model.get(label)
            if found is None:
                found = ModelCounters(
                    self.hits.labels(label),
                    self.misses.labels(label),
                    self.seed_injected.labels(label),
                    self.tokens_saved.labels(label, "prompt"),
                    self.tokens_saved.labels(label, "completion"),
                )
                self._per_model[label] = found
        return found

    def _known(self, name: str) -> str:
        return name if name in self._models else OTHER

    def model(self, name: str) -> str:
        """A bounded label value for a model name; one holding control or format characters
        (an escape sequence, a bidi override), which no real model's name does, is `other`:
        /metrics writes a label's characters as they are, to a terminal running curl, and an
        alert's text quotes them to whoever is on call."""
        if name in self._models:
            return name
        if not name or len(name) > 128 or not name.isprintable():
            return OTHER
        routed = routes.routed(name)
        if self._routed >= MAX_ROUTED if routed else len(self._models) - self._routed >= MAX_MODELS:
            return OTHER
        self._routed += routed
        self._models.add(name)
        # Series born at 0, so that increase() sees the first hit, miss or rotation too.
        for counter in (self.hits, self.misses, self.fingerprint_changes, self.fingerprint_flaps):
            counter.labels(name)
        return name

    def fingerprint_changed(self, model: str, back: bool) -> None:
        label = self.model(model)
        self.fingerprint_changes.labels(label).inc()
        if back:
            self.fingerprint_flaps.labels(label).inc()

    def fingerprint_alternating(self, model: str, alternating: bool) -> None:
        """Every lookup reports; the gauge is touched only when the answer changes."""
        label = self.model(model)
        if self._alternating.get(label) is alternating:
            return
        self._alternating[label] = alternating
        self.alternation.labels(label).set(1 if alternating else 0)

    def fingerprint(self, model_label: str, fingerprint: str) -> str:
        """A bounded label value for one of a model's fingerprints (`other` past the cap)."""
        known = self._fingerprint_labels.setdefault(model_label, set())
        if fingerprint in known:
            return fingerprint
        if len(known) >= MAX_FINGERPRINTS:
            return OTHER
        known.add(fingerprint)
        return fingerprint

    def fingerprint_current(self, model: str, fingerprint: str) -> None:
        """Show `fingerprint` as the model's current one in this process (replicas each
        report)."""
        label = self.model(model)
        current = self.fingerprint(label, fingerprint)
        reported = self._fingerprints.get(label)
        if reported == current:
            return
        if reported is not None:
            self.fingerprint_info.labels(label, reported).set(0)
        self.fingerprint_info.labels(label, current).set(1)
        self._fingerprints[label] = current


def _total(counter: CounterFamily) -> int:
    return int(
        sum(
            sample.value
            for family in counter.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        )
    )
