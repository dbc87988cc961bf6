"""Operator routes: stats and purge, through the HTTP API and the CLI, on memory and Redis."""

from __future__ import annotations

import subprocess
import time

import httpx
import orjson
import pytest

from proxy.tools.output import size
from tests.e2e.test_cli_attacks import run_tty
from tests.fixtures_procs import Proxy, ProxyFactory, Sim, free_port, run_cli

TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def ask(proxy: Proxy, content: str, model: str = "gpt-4o-mini", namespace: str = "") -> str:
    headers = {"X-Repro-Namespace": namespace} if namespace else {}
    response = proxy.chat(content, model=model, key="sk-alice", headers=headers)
    assert response.status_code == 200
    return response.headers["X-Repro-Cache"]


def purge(proxy: Proxy, **selector: object) -> httpx.Response:
    return httpx.post(proxy.url + "/admin/purge", json=selector, headers=ADMIN, timeout=30)


@pytest.fixture(params=["memory", "redis"])
def admin_proxy(request: pytest.FixtureRequest, start_proxy: ProxyFactory) -> Proxy:
    flags = ["--admin-token", TOKEN]
    if request.param == "redis":
        flags += ["--store", request.getfixturevalue("redis_url")]
    return start_proxy(*flags)


def test_stats_count_entries_bytes_and_the_hit_ratio(admin_proxy: Proxy) -> None:
    for content in ("a", "b", "a", "a"):
        ask(admin_proxy, content)
    stats = httpx.get(admin_proxy.url + "/admin/stats", headers=ADMIN, timeout=10).json()
    assert stats["entries"] == 2
    assert stats["bytes"] > 0
    assert stats["raw_bytes"] > 0 and stats["compression_ratio"] is not None
    assert (stats["hits"], stats["misses"]) == (2, 2)
    assert stats["hit_ratio"] == 0.5
    saved = sum(
        admin_proxy.metric("repro_tokens_saved_total", type=t) for t in ("prompt", "completion")
    )
    assert stats["tokens_saved"] == saved > 0
    token = ["--url", admin_proxy.url, "--admin-token", TOKEN]
    status, table = run_tty("stats", *token)  # what docs/operations.md says it shows
    assert status == 0, table
    stored = f"2 answers, {size(stats['bytes'])} ({size(stats['raw_bytes'])} uncompressed)"
    for row in (stored, "50.0%", f"tokens saved │ {saved:.0f} tokens"):
        assert row in table, table


def test_purge_by_namespace_model_and_fingerprint_with_a_dry_run(
    admin_proxy: Proxy, sim: Sim
) -> None:
    ask(admin_proxy, "x", namespace="suite-a")
    ask(admin_proxy, "y", namespace="suite-a")
    ask(admin_proxy, "x", namespace="suite-b")
    ask(admin_proxy, "x", model="gpt-4o")
    dry = purge(admin_proxy, namespace="suite-a", dry_run=True).json()
    assert dry == {"matched": 2, "deleted": 0, "dry_run": True}
    assert ask(admin_proxy, "x", namespace="suite-a") == "HIT"
    assert purge(admin_proxy, namespace="suite-a").json()["deleted"] == 2
    assert ask(admin_proxy, "x", namespace="suite-a") == "MISS"
    assert ask(admin_proxy, "x", namespace="suite-b") == "HIT"
    assert purge(admin_proxy, model="gpt-4o").json()["deleted"] == 1
    assert ask(admin_proxy, "x", model="gpt-4o") == "MISS"
    assert purge(admin_proxy, fingerprint="fp_sim_0001").json()["deleted"] == 3
    assert ask(admin_proxy, "x", namespace="suite-b") == "MISS"


def test_purge_refuses_an_empty_selector_without_all(admin_proxy: Proxy) -> None:
    ask(admin_proxy, "x")
    refused = purge(admin_proxy)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "all"
    assert purge(admin_proxy, model=7).status_code == 400
    assert purge(admin_proxy, all=True).json()["deleted"] == 1


def test_admin_routes_need_the_token(admin_proxy: Proxy, start_proxy: ProxyFactory) -> None:
    for path, method in (("/admin/stats", "GET"), ("/admin/purge", "POST")):
        assert httpx.request(method, admin_proxy.url + path, timeout=5).status_code == 401
    wrong = run_cli("stats", "--url", admin_proxy.url, admin_token="not-the-token")
    assert wrong.returncode == 1
    assert "HTTP 401" in wrong.stderr and "the one given is not it" in wrong.stderr
    no_token = start_proxy()
    assert httpx.get(no_token.url + "/admin/stats", timeout=5).status_code == 404


def cli(*args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, admin_token=token)


def test_operator_cli_subcommands(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy("--admin-token", TOKEN)
    ask(proxy, "x", namespace="n1")
    ask(proxy, "y", namespace="n2")
    stats = cli("stats", "--url", proxy.url)
    assert stats.returncode == 0, stats.stderr
    shown = orjson.loads(stats.stdout)
    assert shown["entries"] == 2
    assert shown["raw_bytes"] >= shown["bytes"] > 0
    assert shown["compression_ratio"] == round(shown["bytes"] / shown["raw_bytes"], 4)
    fingerprints = cli("fingerprints", "--url", proxy.url)
    assert orjson.loads(fingerprints.stdout)["gpt-4o-mini"]["current"] == "fp_sim_0001"
    dry = cli("purge", "--url", proxy.url, "--namespace", "n1", "--dry-run")
    assert orjson.loads(dry.stdout) == {"matched": 1, "deleted": 0, "dry_run": True}
    done = cli("purge", "--url", proxy.url, "--namespace", "n1")
    assert orjson.loads(done.stdout)["deleted"] == 1
    refused = cli("purge", "--url", proxy.url)
    assert refused.returncode == 2
    assert "--all" in refused.stderr
    wrong = cli("stats", "--url", proxy.url, token="wrong")
    assert wrong.returncode == 1
    assert "401" in wrong.stderr


def test_the_probe_learns_a_rotation_of_a_model_served_only_from_the_cache(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy("--probe-interval", "0.5", "--probe-key", "sk-probe")
    assert ask(proxy, "x") == "MISS"
    assert ask(proxy, "x") == "HIT"
    sim.set_fingerprint("fp_sim_0002")
    changes = proxy.metric_reaching("repro_fingerprint_changes_total", 1, model="gpt-4o-mini")
    assert changes == 1
    probes = [r for r in sim.llm_requests() if r["headers"]["Authorization"] == "Bearer sk-probe"]
    body = orjson.loads(probes[0]["body"])
    assert (body["max_completion_tokens"], body["seed"]) == (1, 12345)
    assert ask(proxy, "x") == "MISS"


def test_no_probe_by_default(proxy: Proxy, sim: Sim) -> None:
    ask(proxy, "x")
    ask(proxy, "x")
    time.sleep(1)
    assert len(sim.llm_requests()) == 1


def test_no_cache_may_keep_an_admin_answer(start_proxy: ProxyFactory) -> None:
    """They hold stored prompts and answers (export, rotations) or the store's state, and the
    operators' page reads them in a browser: neither its cache nor one on the way may keep a
    copy for the next user of the machine or the path."""
    proxy = start_proxy("--admin-token", TOKEN)
    ask(proxy, "kept nowhere")
    for path in ("fingerprints", "stats", "rotations", "export"):
        answer = httpx.get(f"{proxy.url}/admin/{path}", headers=ADMIN, timeout=10)
        assert answer.status_code == 200, path
        assert answer.headers["cache-control"] == "no-store", path
    purged = httpx.post(proxy.url + "/admin/purge", json={"all": True}, headers=ADMIN, timeout=10)
    assert purged.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/fingerprints"),
        ("GET", "/admin/stats"),
        ("POST", "/admin/purge"),
        ("GET", "/admin/rotations"),
        ("GET", "/admin/export"),
    ],
)
def test_an_admin_route_whose_store_is_down_is_a_503_in_openai_shape(
    start_proxy: ProxyFactory, method: str, path: str
) -> None:
    """The cache fails open, but a route that exists to read the store has nothing to answer
    with: it says so, naming the store, rather than an empty report."""
    proxy = start_proxy("--store", f"redis://127.0.0.1:{free_port()}/0", "--admin-token", TOKEN)
    body = {"namespace": "n"} if method == "POST" else None
    answer = httpx.request(method, proxy.url + path, json=body, headers=ADMIN, timeout=30)
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert (error["code"], error["type"]) == ("store_unavailable", "server_error")
    assert error["message"].startswith("The store did not answer: ")
