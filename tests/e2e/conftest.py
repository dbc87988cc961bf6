"""Fixtures every end-to-end module may use."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.fixtures_procs import Proxy, Sim, close_open_clients, running_proxies


@pytest.fixture
def ns() -> str:
    """A namespace of this test's own: a fresh, empty partition of a shared proxy's cache."""
    return "t-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def proxies(request: pytest.FixtureRequest, sim_process: Sim) -> Iterator[dict[str, Proxy]]:
    """One proxy per entry of the module's CONFIGS (a name to its flags), launched together so
    the module pays one start-up; its tests keep apart by namespace or model."""
    with running_proxies(sim_process.v1, request.module.CONFIGS) as started:
        yield started


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    """Close every client a test made with `closed_after_test`, even when the test failed."""
    yield
    close_open_clients()
