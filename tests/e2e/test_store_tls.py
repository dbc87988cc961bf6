"""`serve` with a `rediss://` store: a TLS file it cannot use stops the start with one line,
and an option that turns verification off is allowed (managed services with self-signed
certificates need it) but never silently."""

from __future__ import annotations

from pathlib import Path

import orjson

from bench.procs import stop
from tests.egress_peers import Authority, encrypted_key
from tests.fixtures_procs import ProxyFactory, run_cli
from tests.fixtures_tls import TlsRedis


def warnings(log: Path) -> list[dict[str, object]]:
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines() if line.startswith(b"{")]
    return [line for line in lines if line["level"] == "warning"]


def test_ssl_cert_reqs_none_serves_but_warns_at_start_naming_the_option(
    start_proxy: ProxyFactory, redis_tls: TlsRedis, tmp_path: Path
) -> None:
    stranger = Authority.create(tmp_path, "stranger")
    url = redis_tls.url.replace(str(redis_tls.ca), str(stranger.pem)) + "&ssl_cert_reqs=none"
    log = tmp_path / "proxy.log"
    with log.open("wb") as stderr:
        proxy = start_proxy("--store", url, stderr=stderr)
        stop(proxy.proc)
    [warning] = [w for w in warnings(log) if w.get("setting") == "--store / REPRO_STORE"]
    assert warning["option"] == "ssl_cert_reqs=none"
    assert "TLS certificate is not checked" in str(warning["msg"])


def test_a_verifying_rediss_url_starts_without_that_warning(
    start_proxy: ProxyFactory, redis_tls: TlsRedis, tmp_path: Path
) -> None:
    log = tmp_path / "proxy.log"
    with log.open("wb") as stderr:
        proxy = start_proxy("--store", redis_tls.url, stderr=stderr)
        stop(proxy.proc)
    assert [w for w in warnings(log) if w.get("setting") == "--store / REPRO_STORE"] == []


def test_an_encrypted_client_key_stops_serve_with_one_line(tmp_path: Path) -> None:
    authority = Authority.create(tmp_path, "redis-ca")
    client = authority.issue(tmp_path, "redis-client", server=False)
    key = encrypted_key(client, b"correct horse")
    url = f"rediss://127.0.0.1:6380/0?ssl_certfile={client.cert}&ssl_keyfile={key}"
    result = run_cli("serve", "--port", "0", "--store", url)
    assert result.returncode == 2
    assert "pass phrase" not in result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("repro-proxy: --store / REPRO_STORE: ")
    assert "ssl_keyfile: the private key is encrypted" in line
