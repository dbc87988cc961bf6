"""Hostile header bytes from a raw socket, against a real proxy: values the proxy cannot
encode get a 400 in OpenAI's shape, and no credential reaches the log."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.fixtures_procs import Proxy, ProxyFactory, raw_answer, stop

EURO = "€".encode()  # UTF-8 bytes: outside Latin-1 once read


def request(method: bytes, path: bytes, *headers: bytes, body: bytes = b"") -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: localhost", b"Connection: close"]
    lines += [*headers, b"Content-Length: " + str(len(body)).encode()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
ROUTES = [
    (b"POST", b"/v1/chat/completions", CHAT),
    (b"POST", b"/v1/embeddings", orjson.dumps({"model": "m", "input": "x"})),
    (b"GET", b"/v1/models", b""),
    (b"GET", b"/admin/fingerprints", b""),
    (b"GET", b"/healthz", b""),
]
HOSTILE = [
    b"Authorization: Bearer sk-" + EURO,
    b"api-key: " + EURO,
    b"OpenAI-Organization: org-" + EURO,
    b"X-Anything: \xff\xfe",  # not UTF-8 either
]


def test_header_values_outside_latin1_get_a_400_in_openai_shape_on_every_route(
    start_proxy: ProxyFactory,
) -> None:
    proxy = start_proxy("--admin-token", "admin-secret")
    for method, path, body in ROUTES:
        for header in HOSTILE:
            status, _, answer = raw_answer(proxy.port, request(method, path, header, body=body))
            assert status == 400, (path, header)
            error = orjson.loads(answer)["error"]
            assert (error["code"], error["type"]) == ("invalid_header", "invalid_request_error")
            assert error["param"] == header.split(b":")[0].decode()


def test_the_namespace_header_may_still_carry_utf8(proxy: Proxy) -> None:
    head = request(
        b"POST",
        b"/v1/chat/completions",
        b"Authorization: Bearer sk-alice",
        b"Content-Type: application/json",
        b"X-Repro-Namespace: caf\xc3\xa9-" + EURO,
        body=CHAT,
    )
    assert raw_answer(proxy.port, head)[0] == 200


MALFORMED = [
    b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n"
    b"Authorization: Bearer sk-secret-ctl\x01x\r\n\r\n",
    b"GET /v1/models HTTP/1.1 Bearer sk-secret-line\r\nHost: localhost\r\n\r\n",
    b"GET /v1/sk-secret-path\x01 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nAuthorization : Bearer sk-secret-token\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n"
    b"Transfer-Encoding: chunked\r\nAuthorization: Bearer sk-secret-te\r\n\r\n",
]


def refuse_malformed(proxy: Proxy) -> None:
    """Each malformed request gets a 400 in OpenAI's shape that quotes none of its bytes."""
    for raw in MALFORMED:
        status, _, answer = raw_answer(proxy.port, raw)
        assert status == 400
        assert orjson.loads(answer)["error"]["code"] == "invalid_http"
        assert b"sk-secret" not in answer


def test_no_credential_of_a_refused_request_reaches_the_log(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """A client's malformed request is logged at info by kind, never as an error of the
    server with a traceback: any client could fill the error log with them."""
    path = tmp_path / "stderr"
    with path.open("wb") as stderr:
        proxy = start_proxy(stderr=stderr)
        refuse_malformed(proxy)
        stop(proxy.proc)
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    refused = [line for line in lines if line["msg"] == "malformed request refused"]
    assert len(refused) == len(MALFORMED)
    assert {line["level"] for line in refused} == {"info"}
    assert all(line["status"] == 400 and line["error"] for line in refused)
    assert not [line for line in lines if line["level"] in ("warning", "error", "critical")]
    assert b"sk-secret" not in path.read_bytes()


def test_debug_logging_shows_a_refused_request_whole_when_asked_for(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    path = tmp_path / "stderr"
    with path.open("wb") as stderr:
        proxy = start_proxy("--log-level", "debug", stderr=stderr)
        refuse_malformed(proxy)
        stop(proxy.proc)
    assert b"sk-secret-line" in path.read_bytes()
