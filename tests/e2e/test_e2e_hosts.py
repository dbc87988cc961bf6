"""DNS rebinding: a page that points its own name at 127.0.0.1 asks the proxy as a same-origin
page and could read the answers. A real proxy process on loopback answers only the names it
serves; a raw client plays the page (its `Host` is the page's name), curl resolves the page's
name to 127.0.0.1 as a rebound browser does, and the official SDK plays the user."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import openai
import orjson
import pytest
from openai import OpenAI

from proxy.testing.local import LocalProxy
from proxy.testing.session import LLMSession, RecordMode
from tests.fixtures_procs import Proxy, ProxyFactory, Sim, raw_answer, running_proxies

AUTH = "Bearer sk-alice"
CHAT = orjson.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Name a colour."}]}
)
ROUTES_A_PAGE_WOULD_READ = [
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),  # pass-through
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/admin/fingerprints"),
    ("GET", "/admin/ui"),
    ("POST", "/admin/ui/login"),
]


def request(method: str, path: str, host: str | None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"Authorization: {AUTH}", "Connection: close"]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def code(body: bytes) -> str:
    error: str = orjson.loads(body)["error"]["code"]
    return error


def sdk(base_url: str) -> OpenAI:
    return OpenAI(base_url=base_url, api_key="sk-alice", max_retries=0)


def test_a_rebound_page_reads_no_route_of_a_loopback_proxy(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy("--admin-token", "t0ken-of-the-admin")
    with sdk(proxy.v1) as client:
        recorded = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Name a colour."}]
        )
    content = recorded.parse().choices[0].message.content
    assert content
    asked = len(sim.requests())
    for method, path in ROUTES_A_PAGE_WOULD_READ:
        body = CHAT if method == "POST" else b""
        status, _, answer = raw_answer(
            proxy.port, request(method, path, f"evil.example:{proxy.port}", body)
        )
        assert (status, code(answer)) == (403, "host_not_allowed"), path
        assert b"evil.example" in answer and b"--allowed-host" in answer
        assert content.encode() not in answer and b"repro_requests_total" not in answer
    assert len(sim.requests()) == asked  # the pass-through reached nothing
    status, _, answer = raw_answer(
        proxy.port, request("POST", "/v1/chat/completions", "localhost", CHAT)
    )
    assert status == 200 and content.encode() in answer


def test_a_replaying_proxy_which_checks_no_key_keeps_its_answers_from_a_rebound_page(
    sim: Sim, redis_url: str
) -> None:
    store = ("--store", redis_url, "--cache-scope", "shared")
    configs = {"record": store, "replay": (*store, "--cache-mode", "replay")}
    with running_proxies(sim.v1, configs) as proxies:
        recorder, replayer = proxies["record"], proxies["replay"]
        assert (
            raw_answer(recorder.port, request("POST", "/v1/chat/completions", "localhost", CHAT))[0]
            == 200
        )
        keyless = request("POST", "/v1/chat/completions", "localhost", CHAT).replace(
            f"Authorization: {AUTH}\r\n".encode(), b""
        )
        status, _, answer = raw_answer(replayer.port, keyless)
        assert status == 200 and b"chat.completion" in answer  # replay checks no key
        rebound = keyless.replace(
            b"Host: localhost", f"Host: evil.example:{replayer.port}".encode()
        )
        status, _, answer = raw_answer(replayer.port, rebound)
        assert (status, code(answer)) == (403, "host_not_allowed")


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_resolving_a_page_name_to_loopback_is_refused_and_localhost_is_served(
    proxy: Proxy,
) -> None:
    rebound = subprocess.run(
        ["curl", "-s", "--max-time", "10", "--noproxy", "*", "--resolve",
         f"evil.example:{proxy.port}:127.0.0.1", f"http://evil.example:{proxy.port}/metrics"],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    assert code(rebound.stdout) == "host_not_allowed"
    for host in ("localhost", "127.0.0.1"):
        served = subprocess.run(
            ["curl", "-s", "--max-time", "10", "--noproxy", "*",
             f"http://{host}:{proxy.port}/metrics"],
            capture_output=True, timeout=30, check=True,
        )  # fmt: skip
        assert b"repro_requests_total" in served.stdout


@pytest.mark.parametrize(
    ("host", "status", "expected"),
    [
        ("evil.example", 403, "host_not_allowed"),
        ("evil.example.", 403, "host_not_allowed"),
        ("EVIL.EXAMPLE:8080", 403, "host_not_allowed"),
        ("127.0.0.1.evil.example", 403, "host_not_allowed"),
        ("localhost.evil.example:8080", 403, "host_not_allowed"),
        ("evil.localhost", 403, "host_not_allowed"),
        ("127.1", 403, "host_not_allowed"),  # a browser writes it 127.0.0.1
        ("::1", 400, "invalid_host"),
        ("[fe80::1%25eth0]", 400, "invalid_host"),
        ("local host", 400, "invalid_host"),
        ("evil.example@localhost", 400, "invalid_host"),
        ("localhost:80:80", 400, "invalid_host"),
        ("", 400, "invalid_host"),
        ("LOCALHOST", 200, None),
        ("localhost.:8080", 200, None),
        ("127.0.0.1", 200, None),
        ("127.9.9.9:1", 200, None),
        ("[::1]:8080", 200, None),
        ("[::ffff:127.0.0.1]", 200, None),
    ],
)
def test_host_values_a_page_or_a_raw_client_may_send(
    proxy: Proxy, host: str, status: int, expected: str | None
) -> None:
    got, _, answer = raw_answer(proxy.port, request("GET", "/healthz", host))
    assert got == status
    assert (code(answer) if expected else None) == expected


ODD_REQUESTS = [
    (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: evil.example", 400, "invalid_http"),
    (b"GET /healthz HTTP/1.1\r\nHost: evil.example\r\nHost: localhost", 400, "invalid_http"),
    (b"GET /healthz HTTP/1.1", 400, "invalid_http"),  # no Host at all
    (b"GET /healthz HTTP/1.1\r\nHost: local\x01host", 400, "invalid_http"),
    (b"GET /healthz HTTP/1.1\r\nHost: evil\xff.example", 400, "invalid_host"),
    (b"GET http://evil.example/healthz HTTP/1.1\r\nHost: localhost", 403, "host_not_allowed"),
    (b"GET http://localhost/healthz HTTP/1.1\r\nHost: evil.example", 403, "host_not_allowed"),
    (b"GET http://a@localhost/healthz HTTP/1.1\r\nHost: localhost", 400, "invalid_host"),
    (b"GET http://localhost:1/healthz HTTP/1.1\r\nHost: 127.0.0.1", 200, None),
    (b"GET /healthz HTTP/1.0", 200, None),  # HTTP/1.0 may name no host
]


@pytest.mark.parametrize(("head", "status", "expected"), ODD_REQUESTS)
def test_requests_that_name_their_host_oddly(
    proxy: Proxy, head: bytes, status: int, expected: str | None
) -> None:
    got, _, answer = raw_answer(proxy.port, head + b"\r\nConnection: close\r\n\r\n")
    assert got == status
    assert (code(answer) if expected else None) == expected


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_the_sdk_asking_localhost_or_127_0_0_1_is_served(proxy: Proxy, host: str) -> None:
    with sdk(f"http://{host}:{proxy.port}/v1") as client:
        ask_twice = [
            client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Name a colour."}]
            )
            for _ in range(2)
        ]
    assert [r.headers["X-Repro-Cache"] for r in ask_twice] == ["MISS", "HIT"]


POD_HOSTS = [
    "10.244.1.7:8080",
    "repro-proxy.team.svc.cluster.local:8080",
    "proxy:8080",
    "evil.example",
]


def test_a_proxy_on_every_interface_serves_any_name_by_default(
    start_proxy: ProxyFactory,
) -> None:
    proxy = start_proxy("--host", "0.0.0.0")
    for host in POD_HOSTS:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert raw_answer(proxy.port, request("GET", path, host))[0] == 200, (host, path)


def test_named_hosts_on_every_interface_serve_those_localhost_and_addresses(
    start_proxy: ProxyFactory,
) -> None:
    proxy = start_proxy("--host", "0.0.0.0", "--allowed-host", "proxy,.svc.cluster.local")
    for host in [*POD_HOSTS[:3], "localhost:8080", "127.0.0.1:8080"]:
        for path in ("/healthz", "/readyz", "/metrics"):  # probes and Prometheus ask by address
            assert raw_answer(proxy.port, request("GET", path, host))[0] == 200, (host, path)
    status, _, answer = raw_answer(proxy.port, request("GET", "/metrics", "evil.example"))
    assert (status, code(answer)) == (403, "host_not_allowed")


def test_names_given_in_the_environment_are_served_on_loopback(
    start_proxy: ProxyFactory,
) -> None:
    proxy = start_proxy(env={"REPRO_ALLOWED_HOST": "my-laptop.lan"})
    assert raw_answer(proxy.port, request("GET", "/healthz", "my-laptop.lan:8080"))[0] == 200
    assert raw_answer(proxy.port, request("GET", "/healthz", "other.lan"))[0] == 403
    anyone = start_proxy("--allowed-host", "*")
    assert raw_answer(anyone.port, request("GET", "/healthz", "evil.example"))[0] == 200


def test_every_worker_refuses_a_rebound_name(start_proxy: ProxyFactory, redis_url: str) -> None:
    proxy = start_proxy("--workers", "2", "--store", redis_url)
    for _ in range(12):  # a new connection each, so both workers answer
        assert raw_answer(proxy.port, request("GET", "/metrics", "evil.example"))[0] == 403
        assert raw_answer(proxy.port, request("GET", "/healthz", "localhost"))[0] == 200


def test_a_refused_host_is_counted_as_an_error(proxy: Proxy) -> None:
    for _ in range(3):
        raw_answer(proxy.port, request("POST", "/v1/chat/completions", "evil.example", CHAT))
    route = "/v1/chat/completions"
    assert proxy.metric("repro_requests_total", route=route, cache="error") == 3


def test_the_sdk_gets_a_permission_error_naming_the_setting(proxy: Proxy) -> None:
    with sdk(proxy.v1) as client, pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"Host": "evil.example"},
        )
    assert info.value.code == "host_not_allowed"
    assert "--allowed-host" in info.value.message
    assert info.value.response.headers["x-should-retry"] == "false"


def test_the_pytest_plugins_proxy_refuses_a_rebound_name_once_with_its_own_check(
    sim: Sim, tmp_path: Path
) -> None:
    session = LLMSession(RecordMode.ONCE, str(tmp_path / "llm.jsonl"), sim.v1)
    local = LocalProxy(session.settings(), [])
    local.start()
    try:
        port = local.port
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}"):
            status, _, answer = raw_answer(port, request("GET", "/healthz", host))
            assert (status, code(answer)) == (403, "not_this_session"), host
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"LocalHost.:{port}"):
            assert raw_answer(port, request("GET", "/healthz", host))[0] == 200, host
    finally:
        local.stop()
