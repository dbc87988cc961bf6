"""Peers for the egress tests: certificate authorities made here, a small HTTP/1.1 upstream
(plain or TLS, optionally asking for a client certificate, counting its open connections), and
tinyproxy as a real forward proxy.

The upstream runs on its own event loop in a thread, so that the test can call the proxy with
blocking clients while it serves.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bench.procs import settled
from tests.fixtures_procs import free_port

_DAY = datetime.timedelta(days=1)
_HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    """A CA made for one test: its PEM file, and what it needs to sign."""

    pem: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, directory: Path, name: str, *, signs: bool = True) -> Authority:
        """`signs`=False: a CA whose key usage does not allow signing certificates."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            _builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(cert_sign=signs), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        pem = directory / f"{name}.pem"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(pem, cert, key)

    def issue(
        self,
        directory: Path,
        name: str,
        *,
        server: bool,
        hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
        valid: tuple[datetime.timedelta, datetime.timedelta] = (-_DAY, _DAY),
    ) -> Issued:
        """A leaf for `hosts` (names or addresses), valid from now + valid[0] to now + valid[1]:
        a server's, or else a client's."""
        key = ec.generate_private_key(ec.SECP256R1())
        purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        authority_key = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        cert = (
            _builder(subject, self.cert.subject, key.public_key(), valid)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
            .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
            .add_extension(authority_key, critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return _written(directory, name, cert, key)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    valid: tuple[datetime.timedelta, datetime.timedelta] = (-_DAY, _DAY),
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + valid[0])
        .not_valid_after(now + valid[1])
    )


def _written(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Issued:
    issued = Issued(directory / f"{name}.crt", directory / f"{name}.key")
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    issued.key.write_bytes(_pem(key, serialization.NoEncryption()))
    return issued


def encrypted_key(issued: Issued, passphrase: bytes) -> Path:
    """A copy of `issued`'s key encrypted with `passphrase`, beside it."""
    key = serialization.load_pem_private_key(issued.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    path = issued.key.with_suffix(".encrypted.key")
    path.write_bytes(_pem(key, serialization.BestAvailableEncryption(passphrase)))
    return path


def _pem(
    key: ec.EllipticCurvePrivateKey, encryption: serialization.KeySerializationEncryption
) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _names(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    """Subject alternative names: an address as an IP entry, anything else as a DNS name."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def self_signed(directory: Path, name: str) -> Issued:
    """A server certificate for 127.0.0.1 and localhost that signs itself: no CA vouches for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(subject, subject, key.public_key())
        .add_extension(x509.SubjectAlternativeName(_names(("localhost", "127.0.0.1"))), False)
        .sign(key, hashes.SHA256())
    )
    return _written(directory, name, cert, key)


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def server_tls(identity: Issued, client_ca: Path | None = None) -> ssl.SSLContext:
    """A server's TLS context; with `client_ca`, a client certificate signed by it is required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(identity.cert, identity.key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class Upstream:
    """An OpenAI-like upstream on 127.0.0.1: every request gets a chat completion whose content
    echoes the request body, after `delay` seconds. It counts requests, and the connections open
    at once (their peak), which is what a connection cap must bound."""

    def __init__(self, tls: ssl.SSLContext | None = None, delay: float = 0.0) -> None:
        self.port = free_port()
        self.tls = tls
        self.delay = delay
        self.requests = 0
        self.open = 0
        self.peak = 0
        self.names: list[str | None] = []
        """The server name (SNI) each TLS handshake asked for; None when none was sent."""
        if tls is not None:
            tls.sni_callback = lambda _socket, name, _context: self.names.append(name)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        # Every connection's writer, ended or not: `_shut` makes sure each let its socket go,
        # or a transport left closing would be collected (a ResourceWarning) in a later test.
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def v1(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Upstream:
        self._thread.start()
        start = asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.tls)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(timeout=5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shut(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    async def _shut(self) -> None:
        """Stop listening, end the connections still open, let their handlers finish, and wait
        (2 s at most) until every connection has let its socket go, those whose TLS handshake
        failed too, which no handler saw: left closing, one was collected during a later test
        (a ResourceWarning)."""
        gone: asyncio.Future[None] | None = None
        if self._server is not None:
            # Asked before `close`: on Python 3.11 `wait_closed` then waits for the last
            # connection (later versions always do); asked after, it returns at once.
            gone = asyncio.ensure_future(self._server.wait_closed())
            await asyncio.sleep(0)
            self._server.close()
        for writer in self._writers:  # those closed too: a TLS close may still wait on its peer
            writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if gone is not None:
            await asyncio.wait({gone}, timeout=2)
        await asyncio.sleep(0)  # an aborted transport lets its socket go on the next turn

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            for _ in range(100):  # requests on one kept-alive connection, bounded
                body = await _read_request(reader)
                if body is None:
                    return
                self.requests += 1
                await asyncio.sleep(self.delay)
                writer.write(_completion(body))
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            self.open -= 1
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """The body of the next request (framed by Content-Length), None at a clean end."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
    except (asyncio.IncompleteReadError, TimeoutError):
        return None
    if len(head) > _HEAD_LIMIT:
        return None
    match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    length = int(match.group(1)) if match else 0
    return await reader.readexactly(length)


def _completion(request: bytes) -> bytes:
    body = orjson.dumps(
        {
            "id": "chatcmpl-egress",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "gpt-egress",
            "system_fingerprint": "fp_egress",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": request.decode()},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Tinyproxy:
    """tinyproxy in the foreground on a free loopback port, logging each request it receives;
    with `login`, it wants those Basic credentials."""

    def __init__(self, directory: Path, login: tuple[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = directory / "tinyproxy.log"
        self.conf = directory / "tinyproxy.conf"
        auth = f"BasicAuth {login[0]} {login[1]}\n" if login else ""
        self.conf.write_text(
            f"Port {self.port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 30\n"
            f'LogFile "{self.log}"\nLogLevel Info\nMaxClients 50\nDisableViaHeader Yes\n{auth}'
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Tinyproxy:
        self._proc = subprocess.Popen(
            ["tinyproxy", "-d", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_line(self.log, "Accepting connections", self._proc)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=5)

    def requests(self) -> list[str]:
        """The request lines it received, e.g. `CONNECT 127.0.0.1:8443 HTTP/1.1`."""
        text = self.log.read_text() if self.log.exists() else ""
        return re.findall(r"Request \(file descriptor \d+\): (.+)", text)


def _wait_for_line(path: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
    logged = settled(
        lambda: path.exists() and text in path.read_text(),
        lambda done: done or proc.poll() is not None,
        within=10,
    )
    if proc.poll() is not None:
        raise RuntimeError(f"tinyproxy exited with {proc.returncode}")
    if not logged:
        raise RuntimeError(f"tinyproxy did not log {text!r} within 10s")
