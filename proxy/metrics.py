"""The metric families of the contract, registered on an injected registry.

Label values stay bounded: routes are the fixed cacheable paths or `/v1/*`, and model names are
taken as clients send them only up to a cap, after which they are counted as `other`, so a client
inventing model names cannot grow the series without limit. Only served requests (a HIT, or an
upstream 2xx) make a model label, so refused callers cannot use up the cap (see `of`).

What every request counts goes through tallies (see `Tally`), handed to prometheus-client when
the metrics are read; with several workers, each write goes to the shared files at once instead.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MAX_MODELS = 200
OTHER = "other"

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
_UPSTREAM_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


T = TypeVar("T", "Tally", "HistogramTally")


class Counts(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Observes(Protocol):
    def observe(self, amount: float) -> None: ...


class Tally:
    """A counter child's increments, summed in a plain number until `flush`. prometheus-client
    takes a lock on every `inc`, and a HIT counts five times: about 5% of its CPU (README,
    Performance)."""

    __slots__ = ("_child", "_pending")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self._pending: float = 0

    def inc(self, amount: float = 1) -> None:
        self._pending += amount

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, 0
            self._child.inc(pending)


class HistogramTally:
    """A histogram child's observations, counted per bucket until `flush`, as `Tally`."""

    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds: list[float] = child._upper_bounds  # ends with +Inf, as observe() needs
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        """Into the first bucket whose bound is >= amount, as Histogram.observe does."""
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def flush(self) -> None:
        """The child's own values take the sums: its public `observe` takes one value at a
        time, which would cost what the tally saves."""
        if not any(self._counts):
            return
        self._child._sum.inc(self._sum)
        for bucket, count in zip(self._child._buckets, self._counts, strict=True):
            if count:
                bucket.inc(count)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0


@dataclass(frozen=True, slots=True)
class ModelCounters:
    """One model's counters, prepared once: `.labels()` per request costs a lock and a dict
    lookup on every hit."""

    hits: Counts
    misses: Counts
    seed_injected: Counts
    prompt_saved: Counts
    completion_saved: Counts


class Metrics:
    def __init__(self, registry: CollectorRegistry, multiprocess_dir: str | None = None) -> None:
        self.registry = registry
        self._multiprocess_dir = multiprocess_dir
        self._models: set[str] = set()
        self._fingerprints: dict[str, str] = {}
        self._served: dict[tuple[str, str], tuple[Counts, Observes]] = {}
        self._upstream: dict[tuple[str, int], Observes] = {}
        self._tallies: list[Tally | HistogramTally] = []
        self._per_model: dict[str, ModelCounters] = {}
        self.requests = Counter(
            "repro_requests_total",
            "Requests by route and cache outcome",
            ["route", "cache"],
            registry=registry,
        )
        self.hits = Counter(
            "repro_cache_hits_total", "Answers served from the cache", ["model"], registry=registry
        )
        self.misses = Counter(
            "repro_cache_misses_total",
            "Lookups that found nothing servable",
            ["model"],
            registry=registry,
        )
        self.seed_injected = Counter(
            "repro_seed_injected_total",
            "Requests that got the default seed",
            ["model"],
            registry=registry,
        )
        self.fingerprint_changes = Counter(
            "repro_fingerprint_changes_total",
            "New system_fingerprints seen per model",
            ["model"],
            registry=registry,
        )
        self.fingerprint_info = Gauge(
            "repro_fingerprint_info",
            "1 for the current fingerprint of a model, 0 for older ones",
            ["model", "fingerprint"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.tokens_saved = Counter(
            "repro_tokens_saved_total",
            "Tokens answered from the cache instead of the upstream",
            ["model", "type"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "repro_request_duration_seconds",
            "Time to answer a client, by route and cache outcome",
            ["route", "cache"],
            buckets=_PROXY_BUCKETS,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "repro_upstream_duration_seconds",
            "Time until the upstream's response headers",
            ["route", "status"],
            buckets=_UPSTREAM_BUCKETS,
            registry=registry,
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
        self.store_errors = Counter(
            "repro_store_errors_total",
            "Store operations that failed (the proxy failed open)",
            ["op"],
            registry=registry,
        )

    def served(self, route: str, cache: str, took: float) -> None:
        """Count one answered request; the labelled children are looked up once per pair."""
        pair = (route, cache)
        children = self._served.get(pair)
        if children is None:
            children = self._served[pair] = (
                self._counts(self.requests.labels(route, cache)),
                self._observes(self.request_duration.labels(route, cache)),
            )
        children[0].inc()
        children[1].observe(took)

    def upstream_answered(self, route: str, status: int, took: float) -> None:
        """Time one upstream answer to its headers; a child per (route, status), as `served`."""
        child = self._upstream.get((route, status))
        if child is None:
            child = self._upstream[route, status] = self._observes(
                self.upstream_duration.labels(route, str(status))
            )
        child.observe(took)

    def exposition(self) -> bytes:
        """The text format: this process's metrics, or every worker's when there are several."""
        if self._multiprocess_dir is None:
            self.flush()
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    def hit_counts(self) -> tuple[int, int]:
        """Hits and misses this process has counted, over every model."""
        self.flush()
        return _total(self.hits), _total(self.misses)

    def flush(self) -> None:
        """Hand every tally's pending counts to prometheus-client."""
        for tally in self._tallies:
            tally.flush()

    def _counts(self, child: Counter) -> Counts:
        """A tally in front of `child`; with several workers, the child itself: another worker
        may serve the next scrape, and it reads only what the shared files hold."""
        return child if self._multiprocess_dir is not None else self._kept(Tally(child))

    def _observes(self, child: Histogram) -> Observes:
        return child if self._multiprocess_dir is not None else self._kept(HistogramTally(child))

    def _kept(self, tally: T) -> T:
        self._tallies.append(tally)
        return tally

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
                    self._counts(self.hits.labels(label)),
                    self._counts(self.misses.labels(label)),
                    self._counts(self.seed_injected.labels(label)),
                    self._counts(self.tokens_saved.labels(label, "prompt")),
                    self._counts(self.tokens_saved.labels(label, "completion")),
                )
                self._per_model[label] = found
        return found

    def _known(self, name: str) -> str:
        return name if name in self._models else OTHER

    def model(self, name: str) -> str:
        """A bounded label value for a model name."""
        if name in self._models:
            return name
        if len(self._models) >= MAX_MODELS or not name or len(name) > 128:
            return OTHER
        self._models.add(name)
        # Series born at 0, so that increase() sees the first hit, miss or rotation too.
        for counter in (self.hits, self.misses, self.fingerprint_changes):
            counter.labels(name)
        return name

    def fingerprint_current(self, model: str, current: str) -> None:
        """Show `current` as the model's fingerprint in this process (replicas each report)."""
        label = self.model(model)
        reported = self._fingerprints.get(label)
        if reported == current:
            return
        if reported is not None:
            self.fingerprint_info.labels(label, reported).set(0)
        self.fingerprint_info.labels(label, current).set(1)
        self._fingerprints[label] = current


def _total(counter: Counter) -> int:
    return int(
        sum(
            sample.value
            for family in counter.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        )
    )
