"""A `rediss://` URL's TLS options, checked at start as redis-py will use them: a file it cannot
use is one line naming the option, before anything connects, and the options that turn
verification off are named for the start's warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import SettingError, exposed_keys, load
from proxy.store import weakened_tls
from tests.egress_peers import Authority, Issued, encrypted_key


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority.create(tmp_path, "redis-ca")


@pytest.fixture
def client(tmp_path: Path, ca: Authority) -> Issued:
    return ca.issue(tmp_path, "redis-client", server=False)


def refusal(query: str) -> str:
    with pytest.raises(SettingError) as info:
        load({"store": f"rediss://:hunter2@127.0.0.1:6380/0?{query}"}, {})
    message = str(info.value)
    assert message.startswith("--store / REPRO_STORE: ")
    assert "\n" not in message and "hunter2" not in message
    return message


def test_a_missing_ca_file_is_refused_at_start(tmp_path: Path) -> None:
    message = refusal(f"ssl_ca_certs={tmp_path / 'missing.pem'}")
    assert "ssl_ca_certs: unusable: no such file" in message


def test_a_ca_file_that_holds_no_certificate_is_refused(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a certificate\n")
    assert "ssl_ca_certs: unusable" in refusal(f"ssl_ca_certs={notes}")


def test_a_missing_ca_directory_is_refused(tmp_path: Path) -> None:
    assert "ssl_ca_path: no directory" in refusal(f"ssl_ca_path={tmp_path / 'nowhere'}")


def test_an_encrypted_key_is_refused_instead_of_openssl_asking_a_terminal(
    client: Issued,
) -> None:
    key = encrypted_key(client, b"correct horse")
    message = refusal(f"ssl_certfile={client.cert}&ssl_keyfile={key}")
    assert "ssl_keyfile: the private key is encrypted" in message
    assert "correct horse" not in message and "BEGIN" not in message


def test_a_key_that_is_not_the_certificates_is_refused(
    tmp_path: Path, ca: Authority, client: Issued
) -> None:
    other = ca.issue(tmp_path, "other", server=False)
    message = refusal(f"ssl_certfile={client.cert}&ssl_keyfile={other.key}")
    assert "ssl_certfile / ssl_keyfile: unusable: key values mismatch" in message


def test_a_key_without_its_certificate_is_refused(client: Issued) -> None:
    assert "ssl_keyfile needs ssl_certfile" in refusal(f"ssl_keyfile={client.key}")


@pytest.mark.parametrize("value", ["NONE", "off", "0"])
def test_a_cert_reqs_redis_py_does_not_know_is_refused(value: str) -> None:
    assert f"ssl_cert_reqs={value!r}: expected none, optional or required" in refusal(
        f"ssl_cert_reqs={value}"
    )


def test_ciphers_openssl_does_not_know_are_refused() -> None:
    assert "ssl_ciphers: unusable" in refusal("ssl_ciphers=NO-SUCH-CIPHER")


def test_a_usable_client_certificate_and_ca_pass(ca: Authority, client: Issued) -> None:
    url = f"rediss://127.0.0.1:6380/0?ssl_ca_certs={ca.pem}&ssl_certfile={client.cert}"
    url += f"&ssl_keyfile={client.key}&ssl_ciphers=ECDHE+AESGCM"
    assert load({"store": url}, {}).store == url


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("ssl_cert_reqs=none", ["ssl_cert_reqs=none"]),
        ("ssl_check_hostname=false", ["ssl_check_hostname=false"]),
        ("ssl_check_hostname=No", ["ssl_check_hostname=No"]),
        ("ssl_check_hostname=0&ssl_cert_reqs=none", ["ssl_cert_reqs=none", "ssl_check_hostname=0"]),
        ("ssl_cert_reqs=required&ssl_check_hostname=true", []),
        ("ssl_cert_reqs=optional", []),
        ("", []),
    ],
)
def test_the_options_that_turn_verification_off_are_named(query: str, named: list[str]) -> None:
    assert weakened_tls(f"rediss://127.0.0.1:6380/0?{query}") == named


def test_a_plain_redis_url_is_never_named_weakened() -> None:
    assert weakened_tls("redis://127.0.0.1:6379/0") == []


@pytest.mark.parametrize("together", [False, True])
def test_a_store_key_every_local_user_can_read_is_named_for_the_starts_warning(
    together: bool, tmp_path: Path, client: Issued
) -> None:
    if together:
        both = tmp_path / "both.pem"
        both.write_bytes(client.cert.read_bytes() + client.key.read_bytes())
        query, named, path = f"ssl_certfile={both}", "ssl_certfile", both
    else:
        query = f"ssl_certfile={client.cert}&ssl_keyfile={client.key}"
        named, path = "ssl_keyfile", client.key
    path.chmod(0o644)
    client.cert.chmod(0o644)
    settings = load({"store": f"rediss://127.0.0.1:6380/0?{query}"}, {})
    assert exposed_keys(settings) == [(f"--store / REPRO_STORE ({named})", str(path))]
    path.chmod(0o600)
    assert exposed_keys(settings) == []
