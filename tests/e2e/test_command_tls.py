"""The operator commands over https: they trust what the proxy trusts (the system's store, which
SSL_CERT_FILE names, in addition to certifi's bundle), whatever the host, and refuse a
certificate nobody vouches for with one line."""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

import certifi
import orjson
import pytest

from proxy.tools.audit import cli as audit_cli
from proxy.tools.remote import trust
from tests.egress_peers import Authority, Upstream, self_signed, server_tls
from tests.fixtures_procs import run_cli


def subjects(context: ssl.SSLContext) -> list[object]:
    return [cert["subject"] for cert in context.get_ca_certs()]


def test_commands_trust_certifis_bundle_and_the_file_ssl_cert_file_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corporate = Authority.create(tmp_path, "corporate-ca")
    monkeypatch.setenv("SSL_CERT_FILE", str(corporate.pem))
    trusted = subjects(trust())
    assert ((("commonName", "corporate-ca"),),) in trusted
    bundled = subjects(ssl.create_default_context(cafile=certifi.where()))
    assert bundled and all(subject in trusted for subject in bundled)


def test_stats_over_https_to_loopback_trusts_the_ca_ssl_cert_file_names(tmp_path: Path) -> None:
    corporate = Authority.create(tmp_path, "corporate-ca")
    identity = corporate.issue(tmp_path, "proxy", server=True)
    with Upstream(tls=server_tls(identity)) as server:
        url = f"https://127.0.0.1:{server.port}"
        result = run_cli(
            "stats",
            "--url",
            url,
            "--json",
            admin_token="t0ken",
            env={"SSL_CERT_FILE": str(corporate.pem)},
        )
        assert server.requests == 1
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["object"] == "chat.completion"


def test_stats_over_https_refuses_a_self_signed_certificate_in_one_line(tmp_path: Path) -> None:
    with Upstream(tls=server_tls(self_signed(tmp_path, "rogue"))) as server:
        url = f"https://127.0.0.1:{server.port}"
        result = run_cli("stats", "--url", url, admin_token="t0ken-secret")
        assert server.requests == 0
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert f"127.0.0.1:{server.port}" in line and "self-signed certificate" in line
    assert "t0ken-secret" not in line and "Traceback" not in result.stderr


async def check_twice(up: Upstream) -> int:
    """`repro-proxy check -n 2 --json` against `up`: its exit status (the report is on stdout)."""
    parser = argparse.ArgumentParser()
    audit_cli.add_arguments(parser)
    args = ["--base-url", up.v1, "--api-key", "sk-x", "-n", "2", "--json", "-y"]
    return await audit_cli.run(parser.parse_args(args))


async def test_check_against_an_https_upstream_trusts_the_ca_ssl_cert_file_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    corporate = Authority.create(tmp_path, "corporate-ca")
    monkeypatch.setenv("SSL_CERT_FILE", str(corporate.pem))
    with Upstream(tls=server_tls(corporate.issue(tmp_path, "upstream", server=True))) as up:
        code = await check_twice(up)
        assert up.requests == 4
    report = orjson.loads(capsys.readouterr().out)
    assert code == 0
    assert report["arms"]["seeded"]["failed"] == 0


async def test_check_counts_a_refused_certificate_under_its_tls_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Upstream(tls=server_tls(self_signed(tmp_path, "rogue"))) as up:
        code = await check_twice(up)
        assert up.requests == 0
    report = orjson.loads(capsys.readouterr().out)
    assert code == 1
    assert report["arms"]["seeded"]["errors"] == {"ConnectError (TLS: self-signed certificate)": 2}
