"""A user's project for the pytest plugin's tests: pytester with the plugin loaded, OPENAI_*
unset as on a CI runner, and this checkout importable by pytest's subprocesses."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def plugin_args() -> list[str]:
    """Installed, the entry point loads the plugin; from a checkout not yet installed, `-p`."""
    installed = importlib.metadata.entry_points(group="pytest11", name="repro_proxy")
    return [] if installed else ["-p", "proxy.testing.plugin"]


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "REPRO_UPSTREAM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # for pytest's subprocesses and xdist workers
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester
