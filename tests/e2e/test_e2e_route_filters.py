"""`--model` of `repro-proxy purge` and `export` (and the admin routes behind them) selects as
`rotations --model` does: `M` every answer of M whatever its lineage (routed by a keyed query
parameter or header, `M@fleet-…`; the Responses API's `M@responses`), a full lineage name that
lineage's answers alone. Before, a lineage name matched nothing: a routed fleet's answers could
not be purged or exported apart from the model's others."""

from __future__ import annotations

import httpx
import orjson
import pytest

from proxy.core import routes
from tests.fixtures_procs import Proxy, ProxyFactory, run_cli

TOKEN = "route-filter-admin-token"
MODEL = "gpt-4o-mini"
WAIT = 10.0
QUERY = "provider=x"
ASKED = {  # name: (path, query, headers)
    "plain": ("/chat/completions", "", {}),
    "query": ("/chat/completions", QUERY, {}),
    "header": ("/chat/completions", "", {"X-Provider": "y"}),
    "responses": ("/responses", "", {}),
}


def ask(proxy: Proxy, ns: str, name: str) -> str:
    path, query, headers = ASKED[name]
    if path == "/responses":
        body: dict[str, object] = {"model": MODEL, "input": "Name a river."}
    else:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Name a river."}]}
    url = proxy.v1 + path + (f"?{query}" if query else "")
    sent = {"Authorization": "Bearer sk-filter", "X-Repro-Namespace": ns, **headers}
    answer = httpx.post(url, json=body, headers=sent, timeout=WAIT)
    assert answer.status_code == 200, answer.text
    return answer.headers["X-Repro-Cache"]


def cli(*args: str) -> str:
    done = run_cli(*args, admin_token=TOKEN)
    assert done.returncode == 0, done.stderr
    return done.stdout


def exported(proxy: Proxy, ns: str, model: str, store: str | None = None) -> list[str]:
    """The queries of the answers `export --model` writes (from the proxy, or the store)."""
    source = ("--store", store) if store else ("--url", proxy.url)
    out = cli("export", *source, "--namespace", ns, "--model", model)
    return sorted(orjson.loads(line)["query"] for line in out.splitlines())


def matched(proxy: Proxy, ns: str, model: str, dry_run: bool = True) -> int:
    flags = ("--dry-run",) if dry_run else ()
    out = cli("purge", "--url", proxy.url, "--namespace", ns, "--model", model, *flags, "--json")
    return int(orjson.loads(out)["matched"])


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_model_filters_select_every_lineage_of_a_model_or_the_one_named(
    start_proxy: ProxyFactory, redis_url: str, ns: str, backend: str
) -> None:
    store = redis_url if backend == "redis" else "memory://"
    proxy = start_proxy("--admin-token", TOKEN, "--store", store)
    for name in ASKED:
        assert ask(proxy, ns, name) == "MISS"
    lineages = set(orjson.loads(cli("fingerprints", "--url", proxy.url, "--json")))
    by_query = routes.lineage_of(MODEL, routes.CHAT, "", QUERY)
    responses = MODEL + routes.RESPONSES_LINEAGE
    (by_header,) = lineages - {MODEL, by_query, responses}
    assert routes.routed(by_header) and routes.routed(by_query)

    assert exported(proxy, ns, MODEL) == ["", "", "", QUERY]  # every lineage's
    assert exported(proxy, ns, by_query) == [QUERY]  # was: nothing
    assert exported(proxy, ns, by_header) == [""]
    assert exported(proxy, ns, responses) == [""]
    assert exported(proxy, ns, MODEL + "@fleet-0000000000000000") == []
    if backend == "redis":
        assert exported(proxy, ns, by_query, store=redis_url) == [QUERY]

    assert matched(proxy, ns, by_query) == 1
    # the answer, its id's index entry, and the pointer a deletion by any key follows
    assert matched(proxy, ns, responses) == 3
    assert matched(proxy, ns, MODEL) == 6
    assert matched(proxy, ns, by_header, dry_run=False) == 1
    assert {name: ask(proxy, ns, name) for name in ASKED} == {
        "plain": "HIT",
        "query": "HIT",
        "header": "MISS",
        "responses": "HIT",
    }
    assert matched(proxy, ns, MODEL, dry_run=False) == 6
    assert exported(proxy, ns, MODEL) == []
