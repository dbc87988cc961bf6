"""The per-request counters and histograms are tallied in process and handed to prometheus-client
when the metrics are read: what a scrape shows must be exactly what direct counting shows."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import HistogramTally, Metrics, Tally

BUCKETS = (0.001, 0.01, 0.1, 1.0)
# Below every bound, on a bound (the bucket is `le`), between bounds, above all (+Inf), zero.
AMOUNTS = (0.0005, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 7.5, 0.0, 0.001)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return parsed(generate_latest(registry))


def parsed(exposition: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = exposition.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def histograms() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    made = [
        Histogram("h_seconds", "h", ["route"], buckets=BUCKETS, registry=registry).labels("/x")
        for registry in (direct, tallied)
    ]
    return direct, made[0], tallied, made[1]


@pytest.mark.parametrize("flush_each", [False, True])
def test_a_histogram_tally_flushes_to_the_same_buckets_and_sum_as_direct_observations(
    flush_each: bool,
) -> None:
    direct_registry, direct, tallied_registry, child = histograms()
    tally = HistogramTally(child)
    for amount in AMOUNTS:
        direct.observe(amount)
        tally.observe(amount)
        if flush_each:
            tally.flush()
    if not flush_each:
        assert samples(tallied_registry)[("h_seconds_count", (("route", "/x"),))] == 0
        tally.flush()
    assert samples(tallied_registry) == samples(direct_registry)
    tally.flush()  # nothing pending: nothing added twice
    assert samples(tallied_registry) == samples(direct_registry)


def test_a_tally_adds_its_pending_increments_once() -> None:
    registry = CollectorRegistry()
    child = Counter("c_total", "c", ["model"], registry=registry).labels("m")
    tally = Tally(child)
    tally.inc()
    tally.inc(41)
    assert child._value.get() == 0
    tally.flush()
    tally.flush()
    assert child._value.get() == 42


def test_the_exposition_and_the_hit_counts_include_what_was_tallied() -> None:
    metrics = Metrics(CollectorRegistry())
    counters = metrics.of("gpt-x")
    counters.hits.inc()
    counters.hits.inc()
    counters.misses.inc()
    counters.prompt_saved.inc(12)
    metrics.served("/v1/chat/completions", "hit", 0.002)
    metrics.upstream_answered("/v1/chat/completions", 200, 0.3)
    values = parsed(metrics.exposition())
    route = ("route", "/v1/chat/completions")
    hit = (("cache", "hit"), route)
    assert values[("repro_cache_hits_total", (("model", "gpt-x"),))] == 2
    assert values[("repro_tokens_saved_total", (("model", "gpt-x"), ("type", "prompt")))] == 12
    assert values[("repro_requests_total", hit)] == 1
    assert values[("repro_request_duration_seconds_count", hit)] == 1
    bucket = "repro_request_duration_seconds_bucket"
    assert values[(bucket, (("cache", "hit"), ("le", "0.0025"), route))] == 1
    assert values[(bucket, (("cache", "hit"), ("le", "0.001"), route))] == 0
    assert values[("repro_upstream_duration_seconds_sum", (route, ("status", "200")))] == 0.3
    counters.misses.inc()
    assert metrics.hit_counts() == (2, 2)


def test_with_workers_every_count_goes_to_prometheus_client_at_once(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry(), multiprocess_dir=str(tmp_path))
    counters = metrics.of("gpt-x")
    assert not isinstance(counters.hits, Tally)
    counters.hits.inc()
    assert metrics.hits.labels("gpt-x")._value.get() == 1


def test_a_request_not_served_counts_under_its_model_only_once_a_served_one_named_it() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.of("gpt-x", served=False).misses.inc()
    metrics.of("gpt-x").misses.inc()
    metrics.of("gpt-x", served=False).misses.inc()
    values = parsed(metrics.exposition())
    assert values[("repro_cache_misses_total", (("model", "other"),))] == 1
    assert values[("repro_cache_misses_total", (("model", "gpt-x"),))] == 2
