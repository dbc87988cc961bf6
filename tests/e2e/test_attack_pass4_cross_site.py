"""A web page in the developer's (or operator's) browser, Debian's headless chromium, against a
proxy whose upstream needs no key from the caller: a gateway that knows the proxy by its client
certificate (`--upstream-cert`), or a local model server. The page cannot read the answer, and
any key it makes up (in the URL's query, all a form can set) means nothing to such a gateway;
but the proxy lends its own identity to whatever reaches it, so a `no-cors` POST from any site
made the gateway start a fine-tuning job, or spend on a completion, in the proxy's name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_e2e_ui import browser_only, driver  # noqa: F401  (the browser fixture)
from tests.egress_peers import Authority, Issued, Upstream, server_tls
from tests.fixtures_procs import Proxy, ProxyFactory
from tests.hostile import Scripted, fixed, http_answer

PAGE_POSTS = """
const [url, done] = arguments;
const jobs = fetch(url + "/v1/fine_tuning/jobs?api-key=made-up", {method: "POST",
  mode: "no-cors",
  body: JSON.stringify({model: "gpt-4o-mini", training_file: "file-planted"})});
const chat = fetch(url + "/v1/chat/completions", {method: "POST", mode: "no-cors",
  body: JSON.stringify({model: "gpt-4o-mini", messages: [{role: "user", content: "spend"}]})});
Promise.all([jobs, chat]).then(() => done("sent"), (e) => done("failed: " + e));
"""


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Upstream, Authority, Issued]]:
    """An HTTPS gateway that admits whoever shows a certificate its CA signed, and asks for no
    key (it counts every request it answers)."""
    ca = Authority.create(tmp_path, "corporate-ca")
    server = ca.issue(tmp_path, "upstream", server=True)
    client = ca.issue(tmp_path, "client", server=False)
    with Upstream(tls=server_tls(server, client_ca=ca.pem)) as upstream:
        yield upstream, ca, client


def identified_proxy(
    start_proxy: ProxyFactory, gateway: tuple[Upstream, Authority, Issued]
) -> Proxy:
    upstream, ca, client = gateway
    return start_proxy(
        "--upstream-ca", str(ca.pem), "--upstream-cert", str(client.cert),
        "--upstream-key", str(client.key), upstream=upstream.v1,
    )  # fmt: skip


def page_posts(browser: Any, proxy: Proxy) -> None:
    page = http_answer(b"<!doctype html><title>any site</title>", "Content-Type: text/html")
    with Scripted(fixed(page)) as elsewhere:
        browser.set_script_timeout(30)
        browser.get(f"http://127.0.0.1:{elsewhere.port}/")
        assert browser.execute_async_script(PAGE_POSTS, proxy.url) == "sent"


@browser_only
def test_a_page_of_another_site_cannot_spend_the_proxys_identity(
    start_proxy: ProxyFactory,
    gateway: tuple[Upstream, Authority, Issued],
    driver: Any,  # noqa: F811
) -> None:
    upstream = gateway[0]
    proxy = identified_proxy(start_proxy, gateway)
    page_posts(driver, proxy)
    # The proxy's own clients, asking as programs do, reach the gateway as before; a program's
    # request is the proxy's latest, so the page's (had they passed) were answered before it.
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "mine"}]}
    own = httpx.post(proxy.v1 + "/chat/completions", json=body, timeout=30)
    assert own.status_code == 200
    assert upstream.requests == 1


def test_what_a_browser_sends_from_another_site_is_refused_made_up_key_or_not(
    start_proxy: ProxyFactory, gateway: tuple[Upstream, Authority, Issued]
) -> None:
    """On each kind of route to the upstream, whatever key the page makes up: a gateway that
    knows the proxy by its certificate reads none. A cookie the browser adds changes nothing."""
    upstream = gateway[0]
    proxy = identified_proxy(start_proxy, gateway)
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    made_up = ({}, {"Authorization": "Bearer sk-made-up"}, {"Cookie": "session=abc"})
    paths = ("/v1/chat/completions", "/v1/fine_tuning/jobs?api-key=made-up", "/openai/v1/files")
    for site in ("cross-site", "same-site"):
        for path in paths:
            for extra in made_up:
                headers = {"Sec-Fetch-Site": site, **extra}
                refused = httpx.post(proxy.url + path, json=chat, headers=headers, timeout=30)
                assert refused.status_code == 403, (site, path, extra)
                error = refused.json()["error"]
                assert (error["code"], error["type"]) == ("cross_site_request", "permission_error")
                assert refused.headers["x-should-retry"] == "false"
    assert upstream.requests == 0
    # A browser app of the proxy's own origin, a URL typed, any program: served.
    for site in ("same-origin", "none"):
        served = httpx.post(proxy.v1 + "/chat/completions", json=chat,
                            headers={"Sec-Fetch-Site": site}, timeout=30)  # fmt: skip
        assert served.status_code == 200, site
    assert httpx.get(proxy.url + "/healthz", headers=headers, timeout=30).status_code == 200
