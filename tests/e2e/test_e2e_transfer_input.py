"""A cassette that is no cassette is the operator's input to fix, whichever command reads it:
status 2 and one line, as for any other unusable input; status 1 stays for a store or a proxy
that failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures_procs import ProxyFactory, Sim, run_cli

TOKEN = "admin-secret"
BAD = {
    "not-json": b"{not json\n",
    "wrong-type": b'{"format": 1, "key": 7}\n',
    "unknown-format": b'{"format": 99}\n',
}


@pytest.mark.parametrize("content", BAD.values(), ids=BAD.keys())
def test_a_malformed_cassette_is_status_2_for_import_and_diff_alike(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, tmp_path: Path, content: bytes
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    proxy = start_proxy("--admin-token", TOKEN, "--cache-scope", "shared")
    runs = {
        "diff": run_cli("cassette", "diff", str(bad), str(bad)),
        "store": run_cli("import", "--store", redis_url, str(bad)),
        "url": run_cli("import", "--url", proxy.url, str(bad), admin_token=TOKEN),
    }
    for name, done in runs.items():
        assert done.returncode == 2, (name, done.stderr)
        assert len(done.stderr.splitlines()) == 1, (name, done.stderr)
        assert "cassette line 1" in done.stderr, (name, done.stderr)
