"""The per-request counters and histograms are tallied in process and shown by a collector of
their own when the metrics are read: what a scrape shows must be exactly what prometheus-client's
own metrics show for the same counting."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import Metrics
from proxy.tallies import Tallies

BUCKETS = (0.001, 0.01, 0.1, 1.0)
# Below every bound, on a bound (the bucket is `le`), between bounds, above all (+Inf), zero.
AMOUNTS = (0.0005, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 7.5, 0.0, 0.001)

Key = tuple[str, tuple[tuple[str, str], ...]]


def samples(registry: CollectorRegistry) -> dict[Key, float]:
    return parsed(generate_latest(registry))


def parsed(exposition: bytes) -> dict[Key, float]:
    return {key: value for key, value in every_sample(exposition).items() if not created(key)}


def every_sample(exposition: bytes) -> dict[Key, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition.decode())
        for s in family.samples
    }


def created(key: Key) -> bool:
    return key[0].endswith("_created")


def families(registry: CollectorRegistry) -> list[tuple[str, str, str]]:
    text = generate_latest(registry).decode()
    return sorted((f.name, f.type, f.documentation) for f in text_string_to_metric_families(text))


def assert_same_exposition(tallied: CollectorRegistry, direct: CollectorRegistry) -> None:
    """Same families and samples; `_created` timestamps differ only in time, not in series."""
    assert families(tallied) == families(direct)
    assert samples(tallied) == samples(direct)
    created_series = [
        {key for key in every_sample(generate_latest(r)) if created(key)} for r in (tallied, direct)
    ]
    assert created_series[0] == created_series[1]


@pytest.mark.parametrize("read_between", [False, True])
def test_a_histogram_tally_shows_the_same_buckets_and_sum_as_direct_observations(
    read_between: bool,
) -> None:
    direct_registry, tallied_registry, tallies = CollectorRegistry(), CollectorRegistry(), Tallies()
    direct = Histogram("h_seconds", "h", ["route"], buckets=BUCKETS, registry=direct_registry)
    tally = tallies.histogram("h_seconds", "h", ["route"], BUCKETS).labels("/x")
    tallied_registry.register(tallies)
    for amount in AMOUNTS:
        direct.labels("/x").observe(amount)
        tally.observe(amount)
        if read_between:
            assert_same_exposition(tallied_registry, direct_registry)
    assert_same_exposition(tallied_registry, direct_registry)
    assert samples(tallied_registry)[("h_seconds_bucket", (("le", "+Inf"), ("route", "/x")))] == 10
    assert_same_exposition(tallied_registry, direct_registry)  # reading adds nothing


def test_a_counter_tally_shows_what_direct_increments_show() -> None:
    direct_registry, tallied_registry, tallies = CollectorRegistry(), CollectorRegistry(), Tallies()
    direct = Counter("c_total", "c", ["model"], registry=direct_registry)
    family = tallies.counter("c_total", "c", ["model"])
    tallied_registry.register(tallies)
    for amount in (1, 41):
        direct.labels("m").inc(amount)
        family.labels("m").inc(amount)
    direct.labels("zero")  # a series born at 0 shows as 0
    family.labels("zero")
    assert_same_exposition(tallied_registry, direct_registry)
    assert samples(tallied_registry)[("c_total", (("model", "m"),))] == 42


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


def test_the_tallies_show_what_prometheus_client_metrics_show_for_the_same_requests(
    tmp_path: Path,
) -> None:
    """With a multiprocess directory, Metrics counts with prometheus-client's own metrics (in this
    process their values stay in memory): the same requests must expose the same."""
    tallied, direct = CollectorRegistry(), CollectorRegistry()
    for metrics in (Metrics(tallied), Metrics(direct, multiprocess_dir=str(tmp_path))):
        metrics.of("gpt-x").hits.inc()
        metrics.of("gpt-x").seed_injected.inc()
        metrics.of("gpt-y").misses.inc()
        metrics.of("gpt-y").completion_saved.inc(30)
        for took in (*AMOUNTS, 100.0):
            metrics.served("/v1/chat/completions", "hit", took)
        metrics.served("/v1/chat/completions", "error", 0.2)
        metrics.upstream_answered("/v1/chat/completions", 200, 0.3)
        metrics.upstream_answered("/v1/chat/completions", 502, 700.0)
        metrics.store_errors.labels("get").inc()
        assert metrics.hit_counts() == (1, 1)
    for runtime in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        tallied.unregister(runtime)  # shown by one process only: see the test below
    assert_same_exposition(tallied, direct)


def test_one_process_shows_its_runtime_and_workers_only_the_python_version(
    tmp_path: Path,
) -> None:
    alone = Metrics(CollectorRegistry()).exposition().decode()
    for name in ("process_resident_memory_bytes", "process_open_fds", "python_info"):
        assert f"\n{name}" in alone, name
    assert "python_gc_collections_total" in alone
    workers = Metrics(CollectorRegistry(), str(tmp_path)).exposition().decode()
    assert "python_info" in workers
    assert "process_" not in workers


def test_with_workers_every_count_goes_to_prometheus_client_at_once(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry(), multiprocess_dir=str(tmp_path))
    assert isinstance(metrics.hits, Counter)
    metrics.of("gpt-x").hits.inc()
    child = metrics.hits.labels("gpt-x")
    assert [s.value for f in child.collect() for s in f.samples if s.name.endswith("_total")] == [1]


def test_the_registry_refuses_a_metric_named_as_a_tallied_family() -> None:
    metrics = Metrics(CollectorRegistry())
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("repro_requests_total", "again", registry=metrics.registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Histogram("repro_upstream_duration_seconds", "again", registry=metrics.registry)


def test_a_request_not_served_counts_under_its_model_only_once_a_served_one_named_it() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.of("gpt-x", served=False).misses.inc()
    metrics.of("gpt-x").misses.inc()
    metrics.of("gpt-x", served=False).misses.inc()
    values = parsed(metrics.exposition())
    assert values[("repro_cache_misses_total", (("model", "other"),))] == 1
    assert values[("repro_cache_misses_total", (("model", "gpt-x"),))] == 2
