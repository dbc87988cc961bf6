"""`pytest -n 2` works. pytest-xdist's workers each collect the suite and refuse to run when
their test ids differ, so an id may not hold a time or a random value (gzip's header holds the
second it was made); and a benchmark plugin installed beside ours, which warns under xdist, must
not turn that warning into an error."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pytest_run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def collected() -> list[str]:
    done = pytest_run("--collect-only", "-q")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return sorted(line for line in done.stdout.splitlines() if "::" in line)


def test_test_ids_are_the_same_at_each_collection() -> None:
    first = collected()
    time.sleep(1.1)  # past the next whole second
    again = collected()
    assert len(first) > 3000
    assert set(first) ^ set(again) == set()


def test_two_xdist_workers_start() -> None:
    done = pytest_run("-n", "2", "--collect-only", "-q")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
