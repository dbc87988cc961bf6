"""The serving process's runtime settings: the cyclic collector's young threshold, the loop."""

from __future__ import annotations

import gc

import uvloop

from proxy.server import workers


def test_the_collector_walks_young_objects_less_often() -> None:
    before = gc.get_threshold()
    try:
        workers.tune_collector()
        assert gc.get_threshold() == (workers.GC_YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.set_threshold(*before)


def test_the_serving_loop_is_uvloops_from_a_runner_of_its_own() -> None:
    """Asked for by the runner, not installed as the process's policy (deprecated from 3.12)."""
    with workers.event_loop() as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
