"""OpenSSL's reason, found under the wrappings each client puts around the ssl module's error."""

from __future__ import annotations

import ssl

from proxy.core.tlsreason import tls_reason


def wrapped(inner: BaseException, times: int) -> BaseException:
    """`inner` raised inside `times` handlers that each raise their own error, as clients do."""
    outer = inner
    for level in range(times):
        try:
            raise outer
        except BaseException as exc:
            try:
                raise ConnectionError(f"wrapper {level}") from (exc if level % 2 else None)
            except ConnectionError as wrapper:
                outer = wrapper
    return outer


def verify_error(message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    error.verify_message = message
    return error


def test_a_refused_certificate_gives_its_verify_message_through_cause_and_context() -> None:
    assert tls_reason(wrapped(verify_error("certificate has expired"), 3)) == (
        "certificate has expired"
    )


def test_a_failed_handshake_gives_openssls_reason_in_words() -> None:
    error = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    error.reason = "WRONG_VERSION_NUMBER"
    assert tls_reason(wrapped(error, 1)) == "wrong version number"


def test_an_error_that_is_not_tls_gives_none() -> None:
    assert tls_reason(wrapped(OSError("refused"), 2)) is None
    assert tls_reason(None) is None


def test_a_chain_deeper_than_any_client_wraps_is_not_walked_to_its_end() -> None:
    assert tls_reason(wrapped(verify_error("deep"), 20)) is None
