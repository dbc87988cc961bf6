"""The serving process's runtime settings: the cyclic collector's young threshold."""

from __future__ import annotations

import gc

from proxy.server import workers


def test_the_collector_walks_young_objects_less_often() -> None:
    before = gc.get_threshold()
    try:
        workers.tune_collector()
        assert gc.get_threshold() == (workers.GC_YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.set_threshold(*before)
