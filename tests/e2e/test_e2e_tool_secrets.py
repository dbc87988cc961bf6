"""In `shared` scope, an answer a hosted container made with a domain secret the body carries
(a code interpreter's or a shell's network policy, `domain_secrets[].value`) is never served to
another tenant sending the same body, and no export or replayed cassette holds the secret: the
upstream receives it, the key and the stored request name its SHA-256. Before, tenant B's key
read what tenant A's token fetched, and the token sat in every export. Real proxy and sim
processes, the official openai SDK."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import orjson
import pytest

from tests.fixtures_procs import Proxy, ProxyFactory, Sim
from tests.shared_scope import owners_then_others, text_asker

TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CONFIGS = {"shared": ["--cache-scope", "shared", "--admin-token", TOKEN]}

SECRET = "ghp_tenant-a-domain-secret"
POLICY = {
    "type": "allowlist",
    "allowed_domains": ["api.github.com"],
    "domain_secrets": [{"domain": "api.github.com", "name": "GITHUB_TOKEN", "value": SECRET}],
}
TOOLS: dict[str, dict[str, Any]] = {
    "code interpreter": {
        "type": "code_interpreter",
        "container": {"type": "auto", "network_policy": POLICY},
    },
    "shell": {"type": "shell", "environment": {"type": "container_auto", "network_policy": POLICY}},
}


ask = text_asker("gpt-5")
"""X-Repro-Cache, X-Repro-Key and the answer's text, as the SDK reads them."""


@pytest.mark.parametrize("shape", TOOLS)
def test_another_tenant_never_reads_what_a_domain_secret_fetched(
    proxies: dict[str, Proxy], sim_process: Sim, ns: str, shape: str
) -> None:
    body = {"input": "List my open pull requests.", "tools": [TOOLS[shape]]}
    outcome = owners_then_others(ask, proxies["shared"], sim_process, ns, body)
    assert outcome == ("MISS", "own key", 1)  # asked upstream, which checks it
    assert sim_process.llm_requests()[-1]["headers"]["Authorization"] == "Bearer sk-other"


@pytest.mark.parametrize("shape", TOOLS)
def test_no_export_holds_the_secret_and_a_replayed_cassette_still_answers(
    proxies: dict[str, Proxy], sim_process: Sim, start_proxy: ProxyFactory, ns: str, shape: str
) -> None:
    body = {"input": f"List my open pull requests ({shape}).", "tools": [TOOLS[shape]]}
    state, _, text = ask(proxies["shared"], "sk-tenant-a", ns, **body)
    assert state == "MISS"
    assert SECRET in str(sim_process.llm_requests()[-1]["body"])  # the upstream got it as sent
    exported = httpx.get(
        proxies["shared"].url + "/admin/export", params={"namespace": ns}, headers=ADMIN, timeout=10
    ).content
    assert exported.count(b"\n") == 1
    assert b"pull requests (" + shape.encode() in exported
    assert SECRET.encode() not in exported, exported
    request = orjson.dumps(orjson.loads(exported)["request"])
    assert hashlib.sha256(SECRET.encode()).hexdigest().encode() in request  # tells tokens apart
    assert b"GITHUB_TOKEN" in request  # where it goes stays readable

    replay = start_proxy(
        "--cache-scope", "shared", "--cache-mode", "replay", "--admin-token", TOKEN
    )
    imported = httpx.post(replay.url + "/admin/import", content=exported, headers=ADMIN, timeout=10)
    assert imported.json() == {"imported": 1}
    assert ask(replay, "sk-ci", ns, **body)[::2] == ("HIT", text)
    other = orjson.loads(orjson.dumps(body).replace(SECRET.encode(), b"ghp_another"))
    missed = httpx.post(
        replay.v1 + "/responses",
        json={"model": "gpt-5", **other},
        headers={"Authorization": "Bearer sk-ci", "X-Repro-Namespace": ns},
        timeout=10,
    )
    assert missed.status_code == 504  # another secret is another request
