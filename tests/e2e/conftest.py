"""Fixtures every end-to-end module may use."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.fixtures_procs import close_open_clients


@pytest.fixture
def ns() -> str:
    """A namespace of this test's own: a fresh, empty partition of a shared proxy's cache."""
    return "t-" + uuid.uuid4().hex


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    """Close every client a test made with `closed_after_test`, even when the test failed."""
    yield
    close_open_clients()
