"""A redis-server that speaks TLS only, with a certificate authority made for the test run.

Managed Redis services take `rediss://` URLs and a CA of their own: the store must reach them
through redis-py's TLS connection and trust that CA, never a certificate that merely looks right.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fixtures_redis import _binary, _free_port, _wait_until


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class TlsRedis:
    """One running TLS-only redis-server on 127.0.0.1, and the CA that signed its certificate."""

    port: int
    files: TlsFiles

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.files.ca}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, ssl=True, ssl_ca_certs=str(self.files.ca))

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )


def make_certificates(directory: Path) -> TlsFiles:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        _certificate("test CA", ca_key, "test CA", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(_usage(cert_sign=True), True)
        .sign(ca_key, hashes.SHA256())
    )
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    cert = (
        _certificate("127.0.0.1", key, "test CA", ca_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(_usage(cert_sign=False), True)
        .add_extension(x509.SubjectAlternativeName(names), False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _answers_ping(server: TlsRedis) -> bool:
    try:
        with server.client() as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


@contextmanager
def running_tls_redis(directory: Path) -> Iterator[TlsRedis]:
    """Start a redis-server with TLS on its only port, wait for PING, and stop it on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    server = TlsRedis(_free_port(), make_certificates(directory))
    command = [_binary("redis-server"), "--port", "0", "--tls-port", str(server.port)]
    command += ["--bind", "127.0.0.1", "--tls-auth-clients", "no"]
    command += ["--tls-cert-file", str(server.files.cert), "--tls-key-file", str(server.files.key)]
    command += ["--tls-ca-cert-file", str(server.files.ca)]
    command += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    log = (directory / "redis.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until(lambda: process.poll() is None and _answers_ping(server), "TLS redis")
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def redis_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    with running_tls_redis(tmp_path_factory.mktemp("redis-tls")) as server:
        yield server
