"""The offload child takes a bounded number of jobs at once (a real child process)."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.server.offload import WAITING, Busy, Offload


async def test_jobs_past_the_bound_are_refused_and_an_operators_waits() -> None:
    offload = Offload()
    try:
        await offload.run(time.sleep, 0)  # the child is up
        held = [asyncio.ensure_future(offload.run(time.sleep, 0.5)) for _ in range(WAITING)]
        await asyncio.sleep(0)
        with pytest.raises(Busy):
            await offload.run(time.sleep, 0)
        waited = asyncio.ensure_future(offload.run(time.sleep, 0, wait=True))
        await asyncio.gather(*held, waited)
        await offload.run(time.sleep, 0)  # the bound counts jobs in flight, not jobs ever
    finally:
        offload.close()
