"""Fixtures live in small plugin modules so each concern can be read alone.

Tests sit in folders by kind, and each folder marks its tests: `unit` (pure logic, in process),
`store` (the storage contract, against a real redis-server), `e2e` (real proxy, sim and Redis
processes) and `ops` (deploy files, Prometheus, the benchmark). `pytest -m "not slow"` runs the
first two (less the few store tests marked slow themselves: a Redis Cluster, a broken
connection's wait, `repro-proxy serve` under a limited Redis user), a contributor's loop of
under a minute with `-n 2` (two processes; tests/ops/test_parallel_collection.py keeps that
working) and a little over one in a single process; `.ci/run` runs everything. A test that
starts a process of its own (a command line, a server) belongs in `e2e`, or is marked slow in
`store`, whose fast tests start redis-server only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "pytester",
    "tests.fixtures_redis",
    "tests.fixtures_procs",
    "tests.fixtures_tls",
    "tests.llm_project",
]

SLOW_FOLDERS = frozenset({"e2e", "ops"})


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under `-m "not slow"` no test of the slow folders can be selected (each is marked slow
    below), so they are not even imported: that spares each process of the fast run about two
    seconds of collection (the OpenAI and Agents SDKs among others). Any other -m collects them."""
    if " ".join(str(config.getoption("markexpr")).split()) != "not slow":
        return None
    if collection_path.parent == Path(__file__).parent and collection_path.name in SLOW_FOLDERS:
        return True
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        folder = item.path.relative_to(root).parts[0]
        if folder in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.e2e)
