"""Bad input, upstream failures and pass-through routes, against real processes."""

from __future__ import annotations

import asyncio
import gzip
import socket
import tempfile

import aiohttp
import httpx
import orjson
import pytest
from openai import OpenAI

from proxy import __version__
from tests.fixtures_procs import Proxy, ProxyFactory, Sim, free_port, stop

AUTH = {"Authorization": "Bearer sk-alice", "Content-Type": "application/json"}
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def post(
    proxy: Proxy, body: bytes, path: str = "/chat/completions", **headers: str
) -> httpx.Response:
    return httpx.post(proxy.v1 + path, content=body, headers={**AUTH, **headers}, timeout=10)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"model": "m", "temperature": NaN}',
        b'{"model": "m", "temperature": Infinity}',
        b'{"model": "m", "temperature": -Infinity}',
        b'[{"model": "m"}]',
        b'"a string"',
        b"",
        b'{"model": "m", "messages": ' + b"[" * 129 + b"]" * 129 + b"}",
        b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model": "\\ud800"}',
        b'{"model": "\xff"}',
        b'\xef\xbb\xbf{"model": "m"}',  # Python's json skips a BOM: the upstream may read it
        b'{"model": "m", "temperature": 1e400}',  # infinity once parsed, by other readers
        b'{"model": "\xed\xa0\x80"}',  # a surrogate in UTF-8 bytes (CESU-8)
        b'{"model": "\xc0\xaf"}',  # an overlong `/`
    ],
    ids=[
        "syntax",
        "nan",
        "infinity",
        "minus-infinity",
        "array",
        "string",
        "empty",
        "nesting-129",
        "nesting-100000",
        "lone-surrogate",
        "invalid-utf8",
        "bom",
        "number-overflow",
        "utf8-surrogate",
        "overlong-utf8",
    ],
)
def test_bad_json_is_a_400_and_never_reaches_upstream(proxy: Proxy, sim: Sim, body: bytes) -> None:
    assert_error(post(proxy, body), 400, "invalid_json")
    assert sim.llm_requests() == []


def test_nesting_up_to_128_levels_is_accepted(proxy: Proxy) -> None:
    nested = b"[" * 126 + b"]" * 126
    body = b'{"model": "m", "messages": [], "metadata": {"x": ' + nested + b"}}"
    assert post(proxy, body).status_code == 200


@pytest.mark.parametrize("seed", ['"5"', "1.5", "true", "18446744073709551616", "[1]"])
def test_non_integer_seed_is_a_400_naming_the_parameter(proxy: Proxy, seed: str) -> None:
    body = b'{"model": "m", "messages": [], "seed": ' + seed.encode() + b"}"
    error = assert_error(post(proxy, body), 400, "invalid_value")
    assert error["param"] == "seed"


def test_body_over_the_limit_is_a_413(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy("--max-body", "1KiB")
    big = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]})
    assert_error(post(proxy, big), 413, "request_too_large")
    chunked = httpx.post(
        proxy.v1 + "/chat/completions",
        content=iter([big[:600], big[600:]]),
        headers=AUTH,
        timeout=10,
    )
    assert_error(chunked, 413, "request_too_large")
    assert sim.llm_requests() == []
    assert post(proxy, BODY).status_code == 200


def test_a_gzip_body_is_limited_by_its_decompressed_size(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """A compressed body is read as the parser inflates it; the limit applies to what the
    proxy would parse, and the refusal is ours, in OpenAI's shape."""
    proxy = start_proxy("--max-body", "1KiB")
    big = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]})
    assert len(gzip.compress(big)) < 1024
    refused = post(proxy, gzip.compress(big), **{"Content-Encoding": "gzip"})
    assert_error(refused, 413, "request_too_large")
    assert sim.llm_requests() == []
    small = post(proxy, gzip.compress(BODY), **{"Content-Encoding": "gzip"})
    assert small.status_code == 200, small.text
    assert small.headers["X-Repro-Key"] == post(proxy, BODY).headers["X-Repro-Key"]


@pytest.mark.parametrize("path", ["/chat/completions", "/files"])
@pytest.mark.parametrize(
    "body",
    [b"not gzip at all", gzip.compress(BODY)[:20] + b"\x00" * 40],
    ids=["not-gzip", "corrupt"],
)
def test_a_body_that_is_not_the_gzip_it_claims_is_a_400_in_openais_shape(
    start_proxy: ProxyFactory, sim: Sim, path: str, body: bytes
) -> None:
    """The server inflates it while reading: a broken one was an unhandled error (a 500, and a
    traceback logged at error for any client to cause), on cached and pass-through routes."""
    with tempfile.TemporaryFile() as log:
        proxy = start_proxy(stderr=log)
        refused = post(proxy, body, path, **{"Content-Encoding": "gzip"})
        assert_error(refused, 400, "invalid_body")
        assert sim.llm_requests() == []
        assert post(proxy, BODY).status_code == 200  # the proxy serves on
        stop(proxy.proc)
        log.seek(0)
        assert b"unhandled error" not in log.read()


def test_upstream_errors_pass_through_with_headers_and_are_not_cached(
    proxy: Proxy, sim: Sim
) -> None:
    sim.fault(
        kind="status",
        status=429,
        count=1,
        headers={"retry-after": "7", "retry-after-ms": "7000", "x-should-retry": "true"},
        body={
            "error": {
                "message": "slow down",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        },
    )
    limited = post(proxy, BODY)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert limited.headers["retry-after-ms"] == "7000"
    assert limited.headers["x-should-retry"] == "true"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    sim.fault(kind="status", status=503, count=1)
    assert post(proxy, BODY).status_code == 503
    assert post(proxy, BODY, **{"Cache-Control": "only-if-cached"}).status_code == 504
    ok = post(proxy, BODY)
    assert (ok.status_code, ok.headers["X-Repro-Cache"]) == (200, "MISS")
    assert len(sim.llm_requests()) == 3
    assert proxy.metric("repro_requests_total", route="/v1/chat/completions", cache="error") == 3


def test_unreachable_upstream_is_a_502(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(upstream=f"http://127.0.0.1:{free_port()}/v1")
    assert_error(post(proxy, BODY), 502, "upstream_unreachable")


def test_silent_upstream_is_a_504_within_the_timeout(start_proxy: ProxyFactory) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        proxy = start_proxy("--upstream-timeout", "1", upstream=f"http://127.0.0.1:{port}/v1")
        # The client gives up after 10 s, long before the default --upstream-timeout:
        # a 504 is the configured second's.
        response = post(proxy, BODY)
    assert_error(response, 504, "upstream_timeout")


def test_hanging_sim_is_a_504(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy("--upstream-timeout", "0.5")
    sim.fault(kind="hang", count=1)
    assert_error(post(proxy, BODY), 504, "upstream_timeout")


def test_other_v1_routes_pass_through(proxy: Proxy, sim: Sim) -> None:
    with OpenAI(base_url=proxy.v1, api_key="sk-alice", max_retries=0) as sdk:
        models = sdk.models.with_raw_response.list()
        assert models.headers["X-Repro-Cache"] == "BYPASS"
        assert [m.id for m in models.parse().data]
        upload = sdk.files.create(file=("data.jsonl", b'{"a": 1}\n' * 1000), purpose="batch")
    assert upload.bytes > 9000
    recorded = sim.requests()[-1]
    assert recorded["path"] == "/v1/files"
    assert recorded["headers"]["Content-Type"].startswith("multipart/form-data")


def test_pass_through_keeps_method_query_and_status(proxy: Proxy, sim: Sim) -> None:
    response = httpx.get(proxy.v1 + "/nothing-here?limit=3", headers=AUTH, timeout=5)
    assert response.status_code == 404
    assert response.headers["X-Repro-Cache"] == "BYPASS"
    recorded = sim.requests()[-1]
    assert (recorded["method"], recorded["path"], recorded["query"]) == (
        "GET",
        "/v1/nothing-here",
        "limit=3",
    )


def test_hop_by_hop_headers_are_not_forwarded(proxy: Proxy, sim: Sim) -> None:
    post(
        proxy,
        BODY,
        Connection="keep-alive, X-Trace-Hop",
        **{"X-Trace-Hop": "1", "Keep-Alive": "5"},
    )
    headers = {k.lower(): v for k, v in sim.llm_requests()[0]["headers"].items()}
    assert "x-trace-hop" not in headers
    assert "keep-alive" not in headers
    assert headers["host"] == f"127.0.0.1:{sim.port}"


def test_the_clients_user_agent_passes_and_a_missing_one_names_the_proxy(
    proxy: Proxy, sim: Sim
) -> None:
    async def send(content: str, headers: dict[str, str]) -> None:
        body = orjson.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
        )
        async with aiohttp.ClientSession(skip_auto_headers=["User-Agent"]) as session:
            url = proxy.v1 + "/chat/completions"
            async with session.post(url, data=body, headers={**AUTH, **headers}) as response:
                assert response.headers["X-Repro-Cache"] == "MISS"

    asyncio.run(send("one", {"User-Agent": "OpenAI/Python 1.99"}))
    asyncio.run(send("two", {}))
    agents = [r["headers"].get("User-Agent") for r in sim.llm_requests()]
    assert agents == ["OpenAI/Python 1.99", f"repro-proxy/{__version__}"]


def test_get_on_a_cacheable_path_passes_through(proxy: Proxy, sim: Sim) -> None:
    response = httpx.get(proxy.v1 + "/chat/completions", headers=AUTH, timeout=5)
    assert response.headers["X-Repro-Cache"] == "BYPASS"
    assert sim.requests()[-1]["method"] == "GET"


def test_duplicate_keys_are_refused_when_the_body_is_forwarded_as_is(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy("--enforce", "off")
    body = b'{"model": "m", "messages": [], "temperature": 0, "temperature": 2}'
    error = assert_error(post(proxy, body), 400, "invalid_json")
    assert "temperature" in str(error["message"])
    assert sim.llm_requests() == []


def test_duplicate_keys_reach_the_upstream_only_once_when_respelled(proxy: Proxy, sim: Sim) -> None:
    body = b'{"model": "m", "messages": [], "temperature": 0, "temperature": 0.5}'
    assert post(proxy, body).status_code == 200
    assert sim.llm_requests()[0]["body"].count("temperature") == 1
