"""Egress as enterprises need it, end to end: the proxy variables with tinyproxy as a real
forward proxy, a TLS upstream signed by a CA made in the test (--upstream-ca), one that asks for
a client certificate (--upstream-cert / --upstream-key), and the cap on open upstream
connections (--upstream-connections)."""

from __future__ import annotations

import datetime
import ssl
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest

from bench.procs import stop
from proxy.upstream.egress import Egress, tls_context
from tests.egress_peers import (
    Authority,
    Issued,
    Tinyproxy,
    Upstream,
    encrypted_key,
    self_signed,
    server_tls,
)
from tests.fixtures_procs import Proxy, ProxyFactory, Sim, _clean_env, free_port

KEY = "Bearer sk-egress"


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    with Tinyproxy(tmp_path) as forward:
        yield forward


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    """The enterprise's own CA: not in the system store."""
    return Authority.create(tmp_path, "corporate-ca")


@pytest.fixture
def server_cert(tmp_path: Path, ca: Authority) -> Issued:
    return ca.issue(tmp_path, "upstream", server=True)


@pytest.fixture
def client_cert(tmp_path: Path, ca: Authority) -> Issued:
    return ca.issue(tmp_path, "client", server=False)


@pytest.fixture
def tls_upstream(server_cert: Issued) -> Iterator[Upstream]:
    """An HTTPS upstream whose certificate the test's CA signed."""
    with Upstream(tls=server_tls(server_cert)) as upstream:
        yield upstream


def start_trusting(
    start_proxy: ProxyFactory, ca: Authority, upstream: Upstream, *flags: str, **env: str
) -> Proxy:
    """A proxy for the HTTPS `upstream` that trusts the test's CA, with `env` (the forward-proxy
    variables) for its process."""
    return start_proxy("--upstream-ca", str(ca.pem), *flags, upstream=upstream.v1, env=env)


def chat(proxy: Proxy, content: str) -> httpx.Response:
    """One chat completion through the proxy; never through a proxy of the test machine."""
    body = {"model": "gpt-egress", "messages": [{"role": "user", "content": content}]}
    with httpx.Client(trust_env=False, timeout=30) as client:
        return client.post(
            proxy.v1 + "/chat/completions", json=body, headers={"Authorization": KEY}
        )


def answer(response: httpx.Response) -> str:
    return str(response.json()["choices"][0]["message"]["content"])


def assert_unreachable(response: httpx.Response, words: str) -> None:
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_unreachable"
    assert words in error["message"]


class TestForwardProxyVariables:
    @pytest.mark.parametrize("name", ["HTTP_PROXY", "http_proxy"])
    def test_http_upstream_calls_go_through_the_forward_proxy_named_by(
        self, name: str, start_proxy: ProxyFactory, sim: Sim, tinyproxy: Tinyproxy
    ) -> None:
        proxy = start_proxy(env={name: tinyproxy.url})
        response = chat(proxy, "through the forward proxy")
        assert response.status_code == 200
        assert response.json()["system_fingerprint"] == "fp_sim_0001"
        assert len(sim.llm_requests()) == 1
        target = f"POST http://127.0.0.1:{sim.port}/v1/chat/completions HTTP/1.1"
        assert tinyproxy.requests() == [target]

    @pytest.mark.parametrize(
        "variables",
        [
            {"NO_PROXY": "127.0.0.1"},
            {"NO_PROXY": "localhost,127.0.0.1"},
            {"no_proxy": "127.0.0.1"},
        ],
    )
    def test_hosts_in_no_proxy_are_called_directly(
        self,
        variables: dict[str, str],
        start_proxy: ProxyFactory,
        sim: Sim,
        tinyproxy: Tinyproxy,
    ) -> None:
        proxy = start_proxy(env={"HTTP_PROXY": tinyproxy.url, **variables})
        response = chat(proxy, "straight to the upstream")
        assert response.status_code == 200
        assert len(sim.llm_requests()) == 1
        assert tinyproxy.requests() == []

    def test_an_https_upstream_is_reached_through_a_connect_tunnel_of_https_proxy(
        self,
        start_proxy: ProxyFactory,
        tinyproxy: Tinyproxy,
        ca: Authority,
        tls_upstream: Upstream,
    ) -> None:
        proxy = start_trusting(start_proxy, ca, tls_upstream, HTTPS_PROXY=tinyproxy.url)
        response = chat(proxy, "inside the tunnel")
        assert response.status_code == 200
        assert "inside the tunnel" in answer(response)
        assert tls_upstream.requests == 1
        assert tinyproxy.requests() == [f"CONNECT 127.0.0.1:{tls_upstream.port} HTTP/1.1"]

    def test_credentials_in_the_proxy_url_open_a_forward_proxy_that_wants_them(
        self, start_proxy: ProxyFactory, tmp_path: Path, ca: Authority, tls_upstream: Upstream
    ) -> None:
        with Tinyproxy(tmp_path, login=("egress", "s3cret")) as forward:
            with_login = f"http://egress:s3cret@127.0.0.1:{forward.port}"
            proxy = start_trusting(start_proxy, ca, tls_upstream, HTTPS_PROXY=with_login)
            assert chat(proxy, "with proxy credentials").status_code == 200
            assert tls_upstream.requests == 1

    def test_a_forward_proxy_refusing_the_tunnel_is_a_502_naming_the_forward_proxy(
        self, start_proxy: ProxyFactory, tmp_path: Path, ca: Authority, tls_upstream: Upstream
    ) -> None:
        with Tinyproxy(tmp_path, login=("egress", "s3cret")) as forward:
            proxy = start_trusting(start_proxy, ca, tls_upstream, HTTPS_PROXY=forward.url)
            assert_unreachable(chat(proxy, "no proxy credentials"), "forward proxy refused: 407")
            assert tls_upstream.requests == 0

    def test_an_unreachable_forward_proxy_is_a_502_that_does_not_show_its_password(
        self, start_proxy: ProxyFactory
    ) -> None:
        closed = f"http://egress:s3cret@127.0.0.1:{free_port()}"
        proxy = start_proxy(upstream="https://127.0.0.1:9/v1", env={"HTTPS_PROXY": closed})
        response = chat(proxy, "nobody there")
        assert_unreachable(response, "Could not connect to the forward proxy")
        assert "s3cret" not in response.text

    def test_http_proxy_is_not_used_for_an_https_upstream(
        self,
        start_proxy: ProxyFactory,
        tinyproxy: Tinyproxy,
        ca: Authority,
        tls_upstream: Upstream,
    ) -> None:
        proxy = start_trusting(start_proxy, ca, tls_upstream, HTTP_PROXY=tinyproxy.url)
        assert chat(proxy, "direct over TLS").status_code == 200
        assert tinyproxy.requests() == []


class TestUpstreamCa:
    def test_an_upstream_signed_by_an_unknown_ca_is_a_502_saying_it_is_not_trusted(
        self, start_proxy: ProxyFactory, server_cert: Issued
    ) -> None:
        with Upstream(tls=server_tls(server_cert)) as upstream:
            proxy = start_proxy(upstream=upstream.v1)
            response = chat(proxy, "who are you")
            assert_unreachable(response, "certificate is not trusted")
            assert upstream.requests == 0

    def test_upstream_ca_makes_an_upstream_signed_by_that_ca_trusted(
        self, start_proxy: ProxyFactory, ca: Authority, server_cert: Issued
    ) -> None:
        with Upstream(tls=server_tls(server_cert)) as upstream:
            proxy = start_proxy(env={"REPRO_UPSTREAM_CA": str(ca.pem)}, upstream=upstream.v1)
            response = chat(proxy, "trusted now")
            assert response.status_code == 200
            assert "trusted now" in answer(response)

    def test_upstream_ca_adds_to_the_system_store_rather_than_replacing_it(
        self, start_proxy: ProxyFactory, tmp_path: Path, ca: Authority
    ) -> None:
        # SSL_CERT_FILE is where OpenSSL finds the system store: here a CA of the test's own.
        system = Authority.create(tmp_path, "system-ca")
        public = system.issue(tmp_path, "public-upstream", server=True)
        with Upstream(tls=server_tls(public)) as upstream:
            proxy = start_trusting(
                start_proxy,
                ca,
                upstream,
                SSL_CERT_FILE=str(system.pem),
                SSL_CERT_DIR=str(tmp_path / "none"),
            )
            response = chat(proxy, "signed by the system store")
            assert response.status_code == 200
            assert upstream.requests == 1

    def test_the_tls_context_keeps_every_system_ca_and_adds_the_given_one(
        self, ca: Authority
    ) -> None:
        system = ssl.create_default_context()
        context = tls_context(Egress(ca=str(ca.pem)))
        stats = context.cert_store_stats()
        assert stats["x509_ca"] == system.cert_store_stats()["x509_ca"] + 1
        subjects = [cert["subject"] for cert in context.get_ca_certs()]
        assert ((("commonName", "corporate-ca"),),) in subjects
        assert all(cert["subject"] in subjects for cert in system.get_ca_certs())


class TestClientCertificate:
    def test_an_upstream_that_requires_a_client_certificate_refuses_the_proxy_without_one(
        self, start_proxy: ProxyFactory, ca: Authority, server_cert: Issued
    ) -> None:
        with Upstream(tls=server_tls(server_cert, client_ca=ca.pem)) as upstream:
            proxy = start_trusting(start_proxy, ca, upstream)
            response = chat(proxy, "no identity")
            assert response.status_code == 502
            assert response.json()["error"]["code"] == "upstream_unreachable"
            assert upstream.requests == 0

    def test_upstream_cert_and_key_let_the_proxy_in(
        self, start_proxy: ProxyFactory, ca: Authority, server_cert: Issued, client_cert: Issued
    ) -> None:
        with Upstream(tls=server_tls(server_cert, client_ca=ca.pem)) as upstream:
            proxy = start_trusting(
                start_proxy,
                ca,
                upstream,
                "--upstream-cert",
                str(client_cert.cert),
                "--upstream-key",
                str(client_cert.key),
            )
            response = chat(proxy, "with identity")
            assert response.status_code == 200
            assert "with identity" in answer(response)

    def test_a_client_certificate_file_holding_its_key_needs_no_upstream_key(
        self,
        start_proxy: ProxyFactory,
        tmp_path: Path,
        ca: Authority,
        server_cert: Issued,
        client_cert: Issued,
    ) -> None:
        both = tmp_path / "client-with-key.pem"
        both.write_bytes(client_cert.cert.read_bytes() + client_cert.key.read_bytes())
        with Upstream(tls=server_tls(server_cert, client_ca=ca.pem)) as upstream:
            proxy = start_proxy(
                upstream=upstream.v1,
                env={"REPRO_UPSTREAM_CA": str(ca.pem), "REPRO_UPSTREAM_CERT": str(both)},
            )
            assert chat(proxy, "one file").status_code == 200


def serve_exit(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "proxy", "serve", "--port", str(free_port()), *flags]
    return subprocess.run(argv, env=_clean_env(env), capture_output=True, text=True, timeout=30)


class TestWrongTlsFiles:
    @pytest.mark.parametrize(
        ("flags", "named"),
        [
            (("--upstream-ca", "{text}"), "--upstream-ca"),
            (("--upstream-ca", "{missing}"), "--upstream-ca"),
            (("--upstream-cert", "{text}"), "--upstream-cert"),
            (("--upstream-cert", "{ca}"), "--upstream-cert"),
            (("--upstream-cert", "{cert}", "--upstream-key", "{text}"), "--upstream-cert"),
            (("--upstream-key", "{key}"), "--upstream-key"),
            (("--upstream-cert", "{cert}", "--upstream-key", "{other_key}"), "--upstream-cert"),
        ],
    )
    def test_a_wrong_file_stops_serve_with_status_2_and_one_line_naming_the_setting(
        self,
        flags: tuple[str, ...],
        named: str,
        tmp_path: Path,
        ca: Authority,
        client_cert: Issued,
        server_cert: Issued,
    ) -> None:
        text = tmp_path / "notes.txt"
        text.write_text("not a certificate\n")
        files = {
            "text": text,
            "missing": tmp_path / "missing.pem",
            "ca": ca.pem,
            "cert": client_cert.cert,
            "key": client_cert.key,
            "other_key": server_cert.key,
        }
        result = serve_exit(*(flag.format(**files) for flag in flags))
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert len(lines) == 1
        assert lines[0].startswith(f"repro-proxy: {named}")

    @pytest.mark.parametrize("separate", [True, False])
    def test_an_encrypted_key_stops_serve_with_one_line_instead_of_asking_a_terminal(
        self, separate: bool, tmp_path: Path, client_cert: Issued
    ) -> None:
        key = encrypted_key(client_cert, b"correct horse")
        if separate:
            flags = ("--upstream-cert", str(client_cert.cert), "--upstream-key", str(key))
        else:
            both = tmp_path / "both.pem"
            both.write_bytes(client_cert.cert.read_bytes() + key.read_bytes())
            flags = ("--upstream-cert", str(both))
        result = serve_exit("--upstream", "https://127.0.0.1:9/v1", *flags)
        assert result.returncode == 2
        assert "pass phrase" not in result.stdout + result.stderr
        [line] = result.stderr.splitlines()
        named = "--upstream-key / REPRO_UPSTREAM_KEY" if separate else "--upstream-cert"
        assert line.startswith(f"repro-proxy: {named}")
        assert "the private key is encrypted" in line
        assert "BEGIN" not in line and "correct horse" not in line

    def test_a_certificate_file_holding_its_key_is_never_logged(
        self, start_proxy: ProxyFactory, tmp_path: Path, client_cert: Issued
    ) -> None:
        both = tmp_path / "both.pem"
        both.write_bytes(client_cert.cert.read_bytes() + client_cert.key.read_bytes())
        log = tmp_path / "proxy.log"
        with log.open("wb") as stderr, Upstream(tls=server_tls(self_signed(tmp_path, "s"))) as up:
            proxy = start_proxy("--upstream-cert", str(both), upstream=up.v1, stderr=stderr)
            assert_unreachable(chat(proxy, "hello"), "self-signed certificate")
            stop(proxy.proc)
        text = log.read_text()
        assert "upstream failed" in text
        secret = client_cert.key.read_text().splitlines()[1]
        assert "PRIVATE KEY" not in text and secret not in text

    @pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, False), (0o600, False)])
    def test_a_key_file_every_local_user_can_read_is_warned_about_at_start(
        self,
        mode: int,
        warned: bool,
        start_proxy: ProxyFactory,
        tmp_path: Path,
        client_cert: Issued,
        tls_upstream: Upstream,
    ) -> None:
        client_cert.key.chmod(mode)
        log = tmp_path / "proxy.log"
        with log.open("wb") as stderr:
            flags = (
                "--upstream-cert",
                str(client_cert.cert),
                "--upstream-key",
                str(client_cert.key),
            )
            proxy = start_proxy(*flags, upstream=tls_upstream.v1, stderr=stderr)
            stop(proxy.proc)
        lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
        exposed = [line for line in lines if "readable by every local user" in line["msg"]]
        expected = {"setting": "--upstream-key / REPRO_UPSTREAM_KEY", "path": str(client_cert.key)}
        assert [{k: line[k] for k in expected} for line in exposed] == [expected] * warned
        assert "PRIVATE KEY" not in log.read_text()

    def test_a_wrong_file_in_the_environment_is_named_by_its_setting_too(
        self, tmp_path: Path
    ) -> None:
        text = tmp_path / "notes.txt"
        text.write_text("not a certificate\n")
        result = serve_exit(env={"REPRO_UPSTREAM_CA": str(text)})
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1
        assert "REPRO_UPSTREAM_CA" in result.stderr


def concurrent_chats(proxy: Proxy, count: int) -> list[httpx.Response]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda i: chat(proxy, f"distinct body {i}"), range(count)))


class TestConnectionCap:
    @pytest.mark.parametrize(
        ("flags", "env"),
        [(("--upstream-connections", "2"), {}), ((), {"REPRO_UPSTREAM_CONNECTIONS": "2"})],
    )
    def test_upstream_connections_caps_the_connections_open_at_once(
        self, flags: tuple[str, ...], env: dict[str, str], start_proxy: ProxyFactory
    ) -> None:
        with Upstream(delay=0.5) as upstream:
            proxy = start_proxy(*flags, env=env, upstream=upstream.v1)
            responses = concurrent_chats(proxy, 6)
            assert [r.status_code for r in responses] == [200] * 6
            assert all(f"distinct body {i}" in answer(r) for i, r in enumerate(responses))
            assert upstream.requests == 6
            assert upstream.peak == 2

    def test_without_a_cap_concurrent_calls_open_more_connections(
        self, start_proxy: ProxyFactory
    ) -> None:
        with Upstream(delay=0.5) as upstream:
            proxy = start_proxy(upstream=upstream.v1)
            responses = concurrent_chats(proxy, 6)
            assert [r.status_code for r in responses] == [200] * 6
            assert upstream.peak > 2


HOUR = datetime.timedelta(hours=1)


def wrong_certificates(directory: Path, ca: Authority) -> dict[str, Issued]:
    """Server certificates the proxy must refuse although `ca` is trusted; a CA that may not
    sign certificates is added to `ca`'s bundle."""
    lame = Authority.create(directory, "lame-ca", signs=False)
    ca.pem.write_bytes(ca.pem.read_bytes() + lame.pem.read_bytes())
    return {
        "another host": ca.issue(directory, "other", server=True, hosts=("api.example.com",)),
        "expired": ca.issue(directory, "expired", server=True, valid=(-2 * HOUR, -HOUR)),
        "not yet valid": ca.issue(directory, "early", server=True, valid=(HOUR, 2 * HOUR)),
        "self-signed": self_signed(directory, "selfish"),
        "a client's": ca.issue(directory, "client-as-server", server=False),
        "signed by a CA that may not sign": lame.issue(directory, "by-lame", server=True),
    }


REASONS = {
    "another host": "IP address mismatch",
    "expired": "certificate has expired",
    "not yet valid": "certificate is not yet valid",
    "self-signed": "self-signed certificate",
    "a client's": "unsuitable certificate purpose",
    "signed by a CA that may not sign": "invalid CA certificate",
}


class TestUpstreamCertificates:
    """Each certificate a man in the middle or a misconfigured gateway could present: the
    proxy sends nothing, and its 502 names the upstream and OpenSSL's reason, in one line."""

    @pytest.mark.parametrize("kind", list(REASONS))
    def test_a_wrong_certificate_is_a_502_naming_the_upstream_and_the_reason(
        self, kind: str, start_proxy: ProxyFactory, tmp_path: Path, ca: Authority
    ) -> None:
        with Upstream(tls=server_tls(wrong_certificates(tmp_path, ca)[kind])) as upstream:
            proxy = start_trusting(start_proxy, ca, upstream)
            response = chat(proxy, "secret prompt")
            assert_unreachable(response, "certificate is not trusted")
            message = response.json()["error"]["message"]
            assert f"127.0.0.1:{upstream.port}" in message
            assert REASONS[kind] in message
            assert "_ssl.c" not in message and "\n" not in message
            assert upstream.requests == 0

    def test_an_https_upstream_answering_plain_http_is_a_502_not_a_cleartext_call(
        self, start_proxy: ProxyFactory, sim: Sim
    ) -> None:
        proxy = start_proxy(upstream=f"https://127.0.0.1:{sim.port}/v1")
        response = chat(proxy, "must not go in the clear")
        assert_unreachable(response, f"No TLS with the upstream (127.0.0.1:{sim.port})")
        assert "wrong version number" in response.json()["error"]["message"]
        assert sim.llm_requests() == []


class TestHandshake:
    def test_the_upstreams_host_name_is_sent_as_sni_and_a_bare_address_sends_none(
        self, start_proxy: ProxyFactory, ca: Authority, tls_upstream: Upstream
    ) -> None:
        by_name = tls_upstream.v1.replace("127.0.0.1", "localhost")
        proxy = start_proxy("--upstream-ca", str(ca.pem), upstream=by_name)
        assert chat(proxy, "by name").status_code == 200
        by_address = start_trusting(start_proxy, ca, tls_upstream)
        assert chat(by_address, "by address").status_code == 200
        assert tls_upstream.names == ["localhost", None]

    def test_through_a_tunnel_the_sni_is_the_upstreams_not_the_forward_proxys(
        self, start_proxy: ProxyFactory, tinyproxy: Tinyproxy, ca: Authority, tls_upstream: Upstream
    ) -> None:
        by_name = tls_upstream.v1.replace("127.0.0.1", "localhost")
        proxy = start_proxy(
            "--upstream-ca", str(ca.pem), upstream=by_name, env={"HTTPS_PROXY": tinyproxy.url}
        )
        assert chat(proxy, "tunnelled by name").status_code == 200
        assert tinyproxy.requests() == [f"CONNECT localhost:{tls_upstream.port} HTTP/1.1"]
        assert tls_upstream.names == ["localhost"]

    def test_a_certificate_chain_past_openssls_bound_is_refused_not_read_on(
        self, start_proxy: ProxyFactory, tmp_path: Path, ca: Authority, server_cert: Issued
    ) -> None:
        padding = [Authority.create(tmp_path, f"pad-{i}").pem.read_bytes() for i in range(400)]
        chain = tmp_path / "huge-chain.pem"
        chain.write_bytes(server_cert.cert.read_bytes() + b"".join(padding))
        with Upstream(tls=server_tls(Issued(chain, server_cert.key))) as upstream:
            proxy = start_trusting(start_proxy, ca, upstream)
            response = chat(proxy, "a chain of 200 KB")
            assert_unreachable(response, f"No TLS with the upstream (127.0.0.1:{upstream.port})")
            assert "excessive message size" in response.json()["error"]["message"]
            assert upstream.requests == 0
