"""What a newcomer's first mistakes print (pure): `repro-proxy check` given a base URL without
its /v1 asks every request of a path that does not exist; `serve` given its own address as the
upstream would call itself."""

from __future__ import annotations

import io
from collections import Counter

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from rich.console import Console

from proxy.config import SettingError, load
from proxy.errors import NO_ROUTE
from proxy.tools.audit.plan import Plan
from proxy.tools.audit.tally import ArmReport, Report, Tally
from proxy.tools.audit.view import render
from proxy.tools.remote import reason
from proxy.tools.sim.app import create_sim_app
from proxy.tools.sim.state import SimSettings

PLAN = Plan(
    base_url="http://127.0.0.1:8080",
    model="gpt-4o-mini",
    prompt="Name three rivers.",
    system=None,
    seed=12345,
    n=2,
    max_tokens=16,
    concurrency=1,
    distance="text",
    embedding_model="text-embedding-3-small",
)
HINT = "does --base-url lack its /v1"


def shown(*errors: str) -> str:
    """The table `check` prints when each arm failed every request with `errors`."""
    tally = Tally(Counter(), Counter(), Counter(errors), 0, 0, 0)
    report = Report(PLAN, tuple(ArmReport(arm, tally, None) for arm in PLAN.arms))
    out = io.StringIO()
    Console(file=out, width=400, color_system=None).print(render(report))
    return out.getvalue()


@pytest.mark.parametrize(
    "errors",
    [("HTTP 404",), ("HTTP 404 not_found",), ("HTTP 404 invalid_request_error",)],
    ids=["sim", "proxy", "openai"],
)
def test_nothing_but_404s_asks_whether_the_base_url_lacks_v1(errors: tuple[str, ...]) -> None:
    assert HINT in shown(*errors)


@pytest.mark.parametrize(
    "errors",
    [("HTTP 404 model_not_found",), ("HTTP 401 invalid_api_key",), ("HTTP 404", "HTTP 500")],
    ids=["unknown-model", "no-key", "mixed"],
)
def test_other_failures_are_not_blamed_on_the_base_url(errors: tuple[str, ...]) -> None:
    assert HINT not in shown(*errors)


@pytest.mark.parametrize(
    ("flags", "environ"),
    [
        ({"upstream": "http://127.0.0.1:8080/v1"}, {}),
        ({"upstream": "http://localhost:8080/v1"}, {}),
        ({"upstream": "http://127.0.0.1:9000/v1"}, {"REPRO_PORT": "9000"}),
        ({"upstream": "http://127.0.0.1:80/v1", "port": "80", "host": "0.0.0.0"}, {}),
        ({"upstream": "http://[::1]:8080/v1", "host": "::"}, {}),
        ({"upstream": "http://10.1.2.3:8080/v1", "host": "10.1.2.3"}, {}),
        ({"upstream": "http://127.0.0.2:8080/v1", "host": "0.0.0.0"}, {}),
    ],
    ids=["loopback", "localhost", "env-port", "default-port", "ipv6", "same-address", "any-127"],
)
def test_an_upstream_that_is_the_proxy_itself_is_refused(
    flags: dict[str, str], environ: dict[str, str]
) -> None:
    """The SDK's base URL copied into --upstream: a request made the proxy call itself, waiting
    --lock-timeout (30 s) on its own fill lock, then again, until --max-connections."""
    with pytest.raises(SettingError, match=r"^--upstream / REPRO_UPSTREAM: .*call itself"):
        load(flags, environ)


@pytest.mark.parametrize(
    ("flags", "environ"),
    [
        ({"upstream": "http://127.0.0.1:8090/v1"}, {}),  # the sim
        ({"upstream": "http://127.0.0.1:8080/v1", "port": "0"}, {}),
        ({"upstream": "http://10.1.2.3:8080/v1"}, {}),  # another machine, same port
        ({"upstream": "http://127.0.0.1:8080/v1", "host": "10.1.2.3"}, {}),
        ({"upstream": "http://127.0.0.1:8080/v1"}, {"HTTP_PROXY": "http://egress:3128"}),
        ({"upstream": "http://127.0.0.2:8080/v1"}, {}),  # another loopback socket
        ({"upstream": "http://[::1]:8080/v1"}, {}),  # the proxy listens on 127.0.0.1 only
    ],
    ids=[
        "sim",
        "free-port",
        "other-host",
        "listening-elsewhere",
        "forward-proxy",
        "127-0-0-2",
        "v6",
    ],
)
def test_an_upstream_elsewhere_is_not_taken_for_the_proxy(
    flags: dict[str, str], environ: dict[str, str]
) -> None:
    assert load(flags, environ).upstream == flags["upstream"]


@pytest.mark.parametrize(
    ("headers", "said"),
    [
        ({}, "You didn't provide an API key"),
        ({"Authorization": "Bearer "}, "You didn't provide an API key"),  # $KEY never set
        ({"Authorization": "Bearer sk-other"}, "Incorrect API key provided."),
    ],
    ids=["none", "empty", "wrong"],
)
async def test_the_sim_tells_a_missing_key_from_a_wrong_one(
    headers: dict[str, str], said: str
) -> None:
    """The README's curl with $KEY unset sent `Bearer ` and was told 'Incorrect API key', though
    the sim takes any non-empty one."""
    app = create_sim_app(SimSettings(api_keys=("sk-good",)))
    async with TestClient(TestServer(app)) as client:
        answer = await client.get("/v1/models", headers=headers)
        assert answer.status == 401
        error = (await answer.json())["error"]
    assert error["message"].startswith(said)
    assert error["code"] == "invalid_api_key"


def test_a_hex_encryption_key_is_told_to_use_base64() -> None:
    """`openssl rand -hex 32`, the form of key --secret suggests, is valid base64 of 48 bytes:
    the refusal said only that it must decode to 32."""
    hex_key = "ab" * 32
    with pytest.raises(SettingError, match="openssl rand -base64 32") as caught:
        load({"encryption_key": hex_key}, {})
    assert hex_key not in str(caught.value)


def test_only_the_proxys_own_404_hints_at_the_admin_token() -> None:
    """A wrong --url that reaches another server (its own 404 page) is not a proxy without
    --admin-token: the hint would send the operator the wrong way."""
    ours = orjson.dumps({"error": {"message": NO_ROUTE, "code": "not_found"}})
    assert "started without --admin-token" in reason(404, ours)
    other = reason(404, b"<html><body><h1>404 Not Found</h1></body></html>")
    assert other.startswith("HTTP 404: <html>")
    assert "admin-token" not in other
