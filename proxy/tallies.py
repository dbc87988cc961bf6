"""Counts kept as plain numbers, and the prometheus-client Collector that shows them.

Every request counts a few things; prometheus-client's own Counter and Histogram take a lock and
do more per call than a request can afford on the hot path. Here each labelled child is a plain
number (or a list of bucket counts) and the collector turns them into metric families only when
`/metrics` is read. With several workers the shared files are written instead (see
`proxy.metrics.Metrics`), so these serve a single process.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import Protocol

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


class Counts(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Observes(Protocol):
    def observe(self, amount: float) -> None: ...


class CounterFamily(Protocol):
    def labels(self, *values: str) -> Counts: ...

    def collect(self) -> Iterable[Metric]: ...


class HistogramFamily(Protocol):
    def labels(self, *values: str) -> Observes: ...


class Tally:
    """One counter series in a plain number, read when the metrics are read: prometheus-client's
    own children take a lock on every `inc`, and a HIT counts several times."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value: float = 0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class HistogramTally:
    """One histogram series as a count per bucket and a sum, read as `Tally` is."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """Into the first bucket whose bound is >= amount, as Histogram.observe does."""
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class CounterTallies:
    """A counter family whose series are tallies, shown as prometheus-client shows a Counter."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self._series: dict[tuple[str, ...], Tally] = {}

    def labels(self, *values: str) -> Tally:
        found = self._series.get(values)
        if found is None:
            found = self._series[values] = Tally()
        return found

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, tally in list(self._series.items()):
            family.add_metric(values, tally.value, created=tally.created)
        return [family]


class HistogramTallies:
    """A histogram family whose series are tallies: cumulative buckets, `+Inf` last, and the
    `_created` sample prometheus-client's Histogram shows too."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self._bounds = [float(bound) for bound in buckets] + [math.inf]
        self._les = [floatToGoString(bound) for bound in self._bounds]  # type: ignore[no-untyped-call]
        self._series: dict[tuple[str, ...], HistogramTally] = {}

    def labels(self, *values: str) -> HistogramTally:
        found = self._series.get(values)
        if found is None:
            found = self._series[values] = HistogramTally(self._bounds)
        return found

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, tally in list(self._series.items()):
            cumulative = accumulate(list(tally.counts))
            family.add_metric(values, list(zip(self._les, cumulative, strict=True)), tally.sum)
            labels = dict(zip(self.labelnames, values, strict=True))
            family.samples.append(Sample(f"{self.name}_created", labels, tally.created))
        return [family]


class Tallies:
    """The tallied families as one prometheus-client collector. `describe` names them, so that
    the registry refuses a normal metric of the same name."""

    def __init__(self) -> None:
        self._families: list[CounterTallies | HistogramTallies] = []

    def counter(self, name: str, documentation: str, labelnames: Sequence[str]) -> CounterTallies:
        family = CounterTallies(name, documentation, labelnames)
        self._families.append(family)
        return family

    def histogram(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> HistogramTallies:
        family = HistogramTallies(name, documentation, labelnames, buckets)
        self._families.append(family)
        return family

    def describe(self) -> Iterable[Metric]:
        return [metric for family in self._families for metric in family.describe()]

    def collect(self) -> Iterable[Metric]:
        return [metric for family in self._families for metric in family.collect()]
