"""What a newcomer sees in the first hour: warnings at start about the upstream and the store,
the settings line, the access log and the process metrics, read from real processes."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import openai
import orjson
import pytest

from proxy.server.preflight import CHECK_AGENT
from tests.fixtures_procs import Proxy, ProxyFactory, Sim, free_port, run_cli, run_command, stop
from tests.hostile import Received, Scripted, http_answer

SECRET_KEY = "sk-first-hour-secret-0042"
PROMPT = "a purple prompt nobody may log"
AUTH = {"Authorization": f"Bearer {SECRET_KEY}"}


class Logged:
    """A proxy started with its stderr captured; `lines()` reads what it logged so far."""

    def __init__(self, start: ProxyFactory, file: IO[bytes]) -> None:
        self._start = start
        self._file = file
        self.proxy: Proxy | None = None

    def start(self, *flags: str, **kwargs: Any) -> Proxy:
        self.proxy = self._start(*flags, stderr=self._file, **kwargs)
        return self.proxy

    def text(self) -> bytes:
        assert self.proxy is not None
        stop(self.proxy.proc)
        self._file.seek(0)
        return self._file.read()

    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.text().splitlines() if line.startswith(b"{")]


@pytest.fixture
def logged(start_proxy: ProxyFactory) -> Iterator[Logged]:
    with tempfile.TemporaryFile() as file:
        yield Logged(start_proxy, file)


def chat(proxy: Proxy, headers: dict[str, str] = AUTH) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
    return httpx.post(proxy.v1 + "/chat/completions", json=body, headers=headers, timeout=10)


def by_logger(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["logger"] == name]


def test_a_base_url_without_v1_is_named_at_start_without_any_key(logged: Logged) -> None:
    async def not_found(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(http_answer(b'{"detail": "Not Found"}', status="404 Not Found"))
        await writer.drain()

    with Scripted(not_found) as upstream:
        root = f"http://127.0.0.1:{upstream.port}"
        logged.start("--probe-key", SECRET_KEY, upstream=root)
        warnings = by_logger(logged.lines(), "proxy.preflight")
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert warnings[0]["suggestion"] == f"--upstream {root}/v1"
    assert [check.request_line for check in upstream.received] == [
        "GET /models HTTP/1.1",
        "GET /openai/models HTTP/1.1",  # not an Azure-shaped root either
    ]
    for check in upstream.received:
        assert "authorization" not in check.headers
        assert check.headers["user-agent"] == CHECK_AGENT


def test_a_root_with_azure_paths_on_any_host_starts_without_a_warning(logged: Logged) -> None:
    """A gateway or an emulator serving Azure OpenAI's paths alone, on a host that is not
    Azure's: given without /v1 rightly, it is not told it lacks one."""

    async def azure_only(writer: asyncio.StreamWriter, asked: Received) -> None:
        found = asked.request_line.startswith("GET /openai/")
        status = "401 Unauthorized" if found else "404 Not Found"
        writer.write(http_answer(b'{"error": {}}', status=status))
        await writer.drain()

    with Scripted(azure_only) as upstream:
        logged.start(upstream=f"http://127.0.0.1:{upstream.port}")
        assert by_logger(logged.lines(), "proxy.preflight") == []
    assert [check.request_line for check in upstream.received] == [
        "GET /models HTTP/1.1",
        "GET /openai/models HTTP/1.1",
        "GET /v1/models HTTP/1.1",  # not an OpenAI root left without its /v1 either
    ]


def test_the_sims_root_without_v1_is_named_at_start(logged: Logged, sim: Sim) -> None:
    """The README's offline demo with its /v1 left out: the sim's root serves Azure's paths
    too, but OpenAI-shaped requests would all be bare 404s, so the start says what to fix."""
    logged.start(upstream=sim.url)
    (warning,) = by_logger(logged.lines(), "proxy.preflight")
    assert warning["level"] == "warning"
    assert warning["suggestion"] == f"--upstream {sim.url}/v1"
    # after GET /models, a 404 the sim does not record
    checks = sim.requests(start_up_checks=True)
    assert [(r["method"], r["path"]) for r in checks] == [
        ("GET", "/openai/models"),
        ("GET", "/v1/models"),
    ]


def test_a_base_url_with_v1_starts_without_a_word_or_a_request(logged: Logged, sim: Sim) -> None:
    logged.start()
    assert by_logger(logged.lines(), "proxy.preflight") == []
    assert sim.requests(start_up_checks=True) == []


def test_a_replaying_proxy_never_looks_at_the_upstream(logged: Logged, sim: Sim) -> None:
    logged.start("--cache-mode", "replay", upstream=sim.url)
    assert by_logger(logged.lines(), "proxy.preflight") == []


def test_replay_mode_with_nothing_to_replay_is_named_at_start(logged: Logged) -> None:
    """`serve --cache-mode replay` alone: an empty memory store, no cassette, no admin token to
    import one, so every request is a 504; the start said nothing of it."""
    logged.start("--cache-mode", "replay")
    (warning,) = [line for line in logged.lines() if line["msg"].startswith("replay mode")]
    assert warning["level"] == "warning"
    assert warning["setting"] == "--cache-mode / REPRO_CACHE_MODE"


@pytest.mark.parametrize("given", ["cassette", "store", "admin-token"])
def test_replay_mode_with_a_source_of_answers_starts_without_that_warning(
    logged: Logged, given: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if given == "cassette":
        cassette = tmp_path / "llm.jsonl"
        cassette.write_bytes(b"")
        flags = ["--cache-scope", "shared", "--cassette", str(cassette)]
    elif given == "store":
        flags = ["--store", request.getfixturevalue("redis_url")]
    else:
        flags = ["--admin-token", "first-hour-admin-token"]
    logged.start("--cache-mode", "replay", *flags)
    assert [line for line in logged.lines() if line["msg"].startswith("replay mode")] == []


def test_an_upstream_that_never_answers_delays_the_start_by_seconds_only(logged: Logged) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        logged.start(upstream=f"http://127.0.0.1:{port}")
        warnings = by_logger(logged.lines(), "proxy.preflight")
    assert [w["msg"] for w in warnings] == ["the upstream did not answer at start"]


def test_an_unresolvable_upstream_host_is_named_at_start_and_to_clients(logged: Logged) -> None:
    proxy = logged.start(upstream="http://no-such-host.invalid/v1")
    answer = chat(proxy)
    assert answer.status_code == 502
    assert "no-such-host.invalid" in answer.json()["error"]["message"]
    lines = logged.lines()
    (start,) = by_logger(lines, "proxy.preflight")
    assert start["host"] == "no-such-host.invalid"
    failed = [line for line in lines if line["msg"] == "upstream failed"]
    assert len(failed) == 1 and "no-such-host.invalid" in failed[0]["error"]


def test_a_store_down_at_start_is_named_without_its_password(logged: Logged) -> None:
    url = f"redis://:hunter2-pw@127.0.0.1:{free_port()}/0"
    proxy = logged.start("--store", url)
    ready = httpx.get(proxy.url + "/readyz", timeout=5)
    assert ready.status_code == 503
    text = logged.text()
    assert b"hunter2-pw" not in text
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith(b"{")]
    (down,) = [line for line in lines if line["msg"].startswith("the store is unavailable")]
    assert down["store"] == url.replace("hunter2-pw", "***")
    assert "Connection refused" in down["error"]


def test_rediss_to_a_redis_without_tls_is_named_at_start(logged: Logged, redis_url: str) -> None:
    """`rediss://` given for a plain Redis: the TLS handshake is never answered, and the start
    said only that the store timed out (and, of the dictionary, an empty error)."""
    logged.start("--store", redis_url.replace("redis://", "rediss://", 1))
    lines = logged.lines()
    (down,) = [line for line in lines if line["msg"].startswith("the store is unavailable")]
    assert down["hint"].startswith("rediss:// speaks TLS")
    assert all(line.get("error") != "" for line in lines)


def test_a_store_down_at_start_is_not_told_about_tls(logged: Logged) -> None:
    logged.start("--store", f"rediss://127.0.0.1:{free_port()}/0")
    (down,) = [line for line in logged.lines() if line["msg"].startswith("the store is unavail")]
    assert "hint" not in down


def test_the_settings_line_holds_json_values(logged: Logged, sim: Sim) -> None:
    logged.start("--admin-token", "tok-hidden", "--credential-header", "x-tenant")
    text = logged.text()
    assert b"<Enforce" not in text and b"tok-hidden" not in text
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith(b"{")]
    (starting,) = [line for line in lines if line["msg"] == "starting"]
    settings = starting["settings"]
    assert settings["enforce"] == "seed"
    assert settings["cache_mode"] == "readwrite"
    assert settings["admin_token"] == "***"
    assert settings["credential_header"] == ["x-tenant"]
    assert settings["access_log"] is False


@pytest.mark.parametrize("switch", [("--access-log",), ("--access-log", "on"), "env"])
def test_the_access_log_has_a_line_per_request_and_never_the_key_or_prompt(
    start_proxy: ProxyFactory, sim: Sim, switch: tuple[str, ...] | str
) -> None:
    with tempfile.TemporaryFile() as stderr:
        if switch == "env":
            proxy = start_proxy(env={"REPRO_ACCESS_LOG": "on"}, stderr=stderr)
        else:
            proxy = start_proxy(*switch, stderr=stderr)
        first, second = chat(proxy), chat(proxy)
        httpx.get(proxy.url + "/healthz", timeout=5)
        stop(proxy.proc)
        stderr.seek(0)
        text = stderr.read()
    assert SECRET_KEY.encode() not in text and PROMPT.encode() not in text
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith(b"{")]
    access = by_logger(lines, "proxy.access")[-3:]  # before them, the fixture's wait for /healthz
    assert [(a["method"], a["path"], a["status"], a["cache"]) for a in access] == [
        ("POST", "/v1/chat/completions", 200, "miss"),
        ("POST", "/v1/chat/completions", 200, "hit"),
        ("GET", "/healthz", 200, "bypass"),
    ]
    assert all(a["level"] == "info" and a["ms"] >= 0 for a in access)
    assert access[0]["bytes"] == len(first.content)
    assert access[1]["bytes"] == len(second.content)


def test_without_the_access_log_requests_log_nothing(logged: Logged, sim: Sim) -> None:
    chat(logged.start())
    assert by_logger(logged.lines(), "proxy.access") == []


def test_metrics_show_the_process_and_count_refused_answers_as_errors(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy()
    sim.accept_keys("sk-someone-else")
    assert chat(proxy).status_code == 401
    text = proxy.metrics()
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"):
        assert f"\n{name}" in text, name
    assert "python_gc_objects_collected_total" in text
    error = proxy.metric("repro_requests_total", route="/v1/chat/completions", cache="error")
    assert error == 1


@pytest.mark.parametrize("command", ["stats", "fingerprints", "rotations", "export", "health"])
def test_a_url_with_the_sdks_v1_is_refused_before_anything_is_sent(command: str) -> None:
    """`--url http://127.0.0.1:8080/v1`, the base URL the user just gave the SDK: the command
    asked /v1/admin/…, which the proxy passes on to the upstream, admin token and all, and
    printed the upstream's 404."""

    async def not_found(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(http_answer(b'{"error": {"message": "Invalid URL"}}', status="404 Not Found"))
        await writer.drain()

    with Scripted(not_found) as server:
        argv = [command, "--url", server.v1]
        status, stderr = run_command(argv, REPRO_ADMIN_TOKEN="first-hour-admin-token")
    assert status == 2, stderr
    assert "without the /v1" in stderr.strip().splitlines()[-1]
    assert server.received == []


def test_an_admin_command_told_404_names_the_admin_token(start_proxy: ProxyFactory) -> None:
    """A proxy started without --admin-token has no /admin routes: its 404 says only that the
    path has no route, so the command's line says what that most often means."""
    proxy = start_proxy()
    status, stderr = run_command(["stats", "--url", proxy.url], REPRO_ADMIN_TOKEN="some-token")
    assert status == 1, stderr
    (line,) = stderr.strip().splitlines()
    assert "HTTP 404" in line
    assert "started without --admin-token" in line


def test_an_sdk_given_the_address_without_v1_is_told_where_the_api_is(
    start_proxy: ProxyFactory,
) -> None:
    """`OpenAI(base_url="http://127.0.0.1:8080")` asks /chat/completions, outside every route:
    the 404 said only that the path has no route."""
    proxy = start_proxy()
    client = openai.OpenAI(base_url=proxy.url, api_key=SECRET_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "not_found"
    assert "base URL ends in /v1" in error["message"]
    assert PROMPT not in error["message"] and "/chat/completions" not in error["message"]


def test_https_to_a_plain_upstream_says_it_may_mean_http(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """`--upstream https://127.0.0.1:8090/v1` for the sim: OpenSSL's 'wrong version number'
    alone does not tell a newcomer that the server speaks plain HTTP."""
    proxy = start_proxy(upstream=sim.v1.replace("http://", "https://", 1))
    answer = chat(proxy)
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["code"] == "upstream_unreachable"
    assert "wrong version number" in error["message"]
    assert "does --upstream mean http://?" in error["message"]


@pytest.mark.parametrize("command", ["export", "import"])
@pytest.mark.parametrize("given", [":pw-first-hour@{}/0", "{}/0?pass%77ord=pw-first-hour"])
def test_a_store_the_cassette_commands_cannot_reach_is_named_with_its_cause(
    command: str, given: str, tmp_path: Path
) -> None:
    """`export --store redis://…` with nothing listening said 'redis sealed failed:
    ConnectionError': neither which store nor why. A password is masked however the URL
    names it: redis-py decodes `pass%77ord` as `password`, which the mask read literally."""
    port = free_port()
    url = "redis://" + given.format(f"127.0.0.1:{port}")
    cassette = tmp_path / "llm.jsonl"
    cassette.write_bytes(b"")
    argv = [command, "--store", url, *([str(cassette)] if command == "import" else [])]
    status, stderr = run_command(argv)
    assert status == 1, stderr
    (line,) = stderr.strip().splitlines()
    assert "the store " + url.replace("pw-first-hour", "***") in line
    assert f"connecting to 127.0.0.1:{port}" in line  # redis-py's words for why
    assert "pw-first-hour" not in stderr


def test_a_cassette_imported_twice_logs_no_rotation_the_upstream_never_made(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """Re-running `repro-proxy import` with a cassette holding two fingerprints of a model
    replayed its history again: the model 'rotated back' and forth on each import, three of
    which within the flap window made it alternating (every fingerprint current)."""
    token = "first-hour-admin-token"
    proxy = start_proxy("--cache-scope", "shared", "--admin-token", token)
    chat(proxy)
    sim.set_fingerprint("fp_first_hour_b")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "another"}]}
    httpx.post(proxy.v1 + "/chat/completions", json=body, headers=AUTH, timeout=10)
    cassette = tmp_path / "answers.jsonl"
    exported = run_cli("export", "--url", proxy.url, "-o", str(cassette), admin_token=token)
    assert exported.returncode == 0, exported.stderr
    for _ in range(3):
        imported = run_cli("import", "--url", proxy.url, str(cassette), admin_token=token)
        assert imported.returncode == 0, imported.stderr
    admin = {"Authorization": f"Bearer {token}"}
    report = httpx.get(proxy.url + "/admin/rotations", headers=admin, timeout=10).json()
    rotations = report["models"]["gpt-4o-mini"]["rotations"]
    assert [(r["from"], r["to"], r["change"]) for r in rotations] == [
        ("fp_sim_0001", "fp_first_hour_b", "rotated")
    ]
    assert report["models"]["gpt-4o-mini"]["current"] == "fp_first_hour_b"


def test_an_upstream_nothing_listens_on_is_named_with_the_cause(
    start_proxy: ProxyFactory,
) -> None:
    """`serve` started before the sim: the 502 read 'Cannot connect to host 127.0.0.1:P
    ssl:default [Connect call failed (...)]', naming TLS for a plain http:// upstream."""
    port = free_port()
    proxy = start_proxy(upstream=f"http://127.0.0.1:{port}/v1")
    answer = chat(proxy)
    assert answer.status_code == 502
    message = answer.json()["error"]["message"]
    assert message == f"Could not connect to the upstream (127.0.0.1:{port}): Connection refused."


def test_a_path_holding_a_line_break_is_routed_answered_in_our_shape_and_logged(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """No route's pattern matched a path whose decoded form holds CR or LF: aiohttp answered
    its own plain `404: Not Found`, with no access-log line, so a client could probe unseen."""
    with tempfile.TemporaryFile() as stderr:
        proxy = start_proxy("--access-log", stderr=stderr)
        with httpx.Client(timeout=5) as client:
            unrouted = client.get(proxy.url + "/nothing%0Ahere")
            passed = client.get(proxy.v1 + "/models%0Ax", headers=AUTH)
        stop(proxy.proc)
        stderr.seek(0)
        text = stderr.read()
    assert unrouted.status_code == 404 and unrouted.json()["error"]["code"] == "not_found"
    assert passed.headers["X-Repro-Cache"] == "BYPASS"  # a pass-through, sent as it came
    assert sim.requests()[-1]["path"] == "/v1/models\nx"
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith(b"{")]
    logged = [a["path"] for a in by_logger(lines, "proxy.access")]
    assert "/nothing\\nhere" in logged and "/v1/models\\nx" in logged  # as visible escapes
